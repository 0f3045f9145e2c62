"""Kill a 6-step tiny training run with SIGKILL at seeded random points, resume it each time, and check
that it ends with the weights of an uninterrupted run and leaves no temporary behind.

    python tests/kill_resume.py [--kills 20] [--seed 0] [--work DIR]

Each kill waits, at random, either for a write to start (a temporary name appearing in OUT for
config.yaml or log.csv, in OUT/checkpoints for a checkpoint or the pruning of an old one, or in
OUT/model for the exported model), then up to 4 ms more, or for a training step to end (a new row in log.csv), then up to 60 ms more. The run uses one torch thread, no loader workers and a checkpoint every step.
"""
import argparse
import csv
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from helpers import write_images

TINY = Path(__file__).parent.parent / "configs" / "tiny.yaml"
STEPS = 6
SETTINGS = ["data.crop=32", "train.batch=2", "data.workers=0", "data.sigma_crops=4", "train.log_every=1",
            "train.checkpoint_every=1", "train.keep_checkpoints=2", "train.warmup=2", f"train.steps={STEPS}"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
POLL_S = 0.0005


def command(images, out):
    return [sys.executable, "-m", "ecdp", "train", "--config", str(TINY), "--data", str(images), "--out", str(out),
            "--device", "cpu", "--resume", "--set", *SETTINGS]


def temporaries(out):
    """The temporary names (files or folders starting with '.') in OUT, OUT/checkpoints and OUT/model,
    read while a run may be removing them."""
    found = set()
    for folder in (out, out / "checkpoints", out / "model"):
        try:
            found |= {folder / entry.name for entry in os.scandir(folder) if entry.name.startswith(".")}
        except FileNotFoundError:
            pass
    return found


def logged_steps(out):
    path = Path(out) / "log.csv"
    return sum(1 for _ in path.open()) - 1 if path.is_file() else 0


def kill_once(images, out, rng):
    """Start a resumed run and SIGKILL it at a random point; return what it was killed at, or None
    when it ended by itself first."""
    finished = logged_steps(out) >= STEPS
    on_write = finished or rng.random() < 0.85
    folder = out / ("." if finished else rng.choice(["checkpoints", "checkpoints", "model", "."]))
    delay = rng.uniform(0, 0.004) if on_write else rng.uniform(0, 0.06)
    before, steps = temporaries(out), logged_steps(out)
    process = subprocess.Popen(command(images, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None:
        started = {p for p in temporaries(out) - before if p.parent == folder}
        if started if on_write else logged_steps(out) > steps:
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            process.wait()
            what = f"the write of {min(started).relative_to(out)}" if on_write else f"the end of step {steps + 1}"
            return f"{what} +{1000 * delay:.1f} ms"
        time.sleep(POLL_S)
    return None


def weights(out):
    """The tensors of the final checkpoint and of the exported model."""
    folder = Path(out) / "checkpoints" / f"step-{STEPS:08d}"
    found = {name: load_file(str(folder / f"{name}.safetensors")) for name in ("model", "ema", "optimizer")}
    found["export"] = load_file(str(Path(out) / "model" / "model.safetensors"))
    return found


def losses(out):
    return [row[1] for row in list(csv.reader((Path(out) / "log.csv").open()))[1:]]


def check(kills=20, seed=0, work=None):
    """Run the experiment in ``work`` (a new temporary folder by default); return a list of problems."""
    work = Path(work or tempfile.mkdtemp(prefix="kill-resume-"))
    images = work / "images"
    write_images(images, [(48, 40), (40, 56), (64, 48)])
    subprocess.run(command(images, work / "straight"), env=ENV, check=True, capture_output=True)
    rng, out = random.Random(seed), work / "killed"
    done = 0
    for _ in range(5 * kills):
        if done == kills:
            break
        point = kill_once(images, out, rng)
        if point:
            done += 1
            print(f"kill {done:2d} at {point}: {logged_steps(out)} steps logged, "
                  f"{len(temporaries(out))} temporaries left", flush=True)
    final = subprocess.run(command(images, out), env=ENV, capture_output=True, text=True)
    problems = [] if done == kills else [f"only {done} of {kills} kills landed"]
    if final.returncode:
        return problems + [f"the final resume failed: {final.stderr[-2000:]}"]
    a, b = weights(work / "straight"), weights(out)
    problems += [f"{name} differs from the uninterrupted run" for name in a
                 if a[name].keys() != b[name].keys() or not all(torch.equal(a[name][k], b[name][k]) for k in a[name])]
    if losses(work / "straight") != losses(out):
        problems.append(f"log.csv losses differ: {losses(work / 'straight')} vs {losses(out)}")
    problems += [f"temporary left: {p}" for p in sorted(out.rglob(".*"))]
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", help="folder for the images and runs (default: a new temporary folder)")
    args = parser.parse_args()
    problems = check(args.kills, args.seed, args.work)
    print("\n".join(problems) or f"{args.kills} kills: same weights as the uninterrupted run, no temporaries left")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
