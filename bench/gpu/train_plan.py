"""The GPU training call's plan: the preset and speed keys chosen from the steps/s this GPU gives.

    python3 -m bench.gpu.train_plan DATA OUT [--quick]     (bench/gpu/train.sh runs it first)

Times the score-matching step (eq. 16; the stage with most of the minutes) of each candidate
config on a batch of the training photos, with today's settings and with ``train.channels_last``,
and chooses:

- the largest preset whose score stage, at its measured rate, reaches at least MIN_SCORE_STEPS
  steps in its ``train.minutes`` (the shipped tiny model trained 950; a larger network given fewer
  steps than that would be undertrained), else the smallest;
- ``train.channels_last`` where it made that preset's step faster.

Writes OUT/plan.json (every rate and the choice) and prints the two shell assignments that
bench/gpu/train.sh reads: ``CONFIG=...`` and ``KEYS="..."``. --quick: the same on the CPU at one
timed step of tiny crops, for the rehearsal.
"""
import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CANDIDATES = [("small", ROOT / "configs" / "small_x4.yaml"), ("tiny", ROOT / "configs" / "default_x4.yaml")]
"""(preset, config), largest first: the presets whose model file stays under 25 MB."""
MIN_SCORE_STEPS = 950
SPEED_KEYS = {"today": [], "channels_last": ["train.channels_last=true"]}
PROBE = ["model.sigma=0.1", "data.workers=0"]   # sigma is not estimated for a timing, the batch is loaded once
QUICK = ["data.crop=32", "train.batch=2"]


def step_rate(config_path, data, overrides, device, warmup, steps):
    """Score-stage training steps per second of the config at `config_path` with `overrides`, on
    `device`, on one batch of the images in `data` (loaded once: the step alone is timed)."""
    from ecdp.config import load_config
    from ecdp.ranks import Ranks
    from ecdp.train import Trainer

    config = load_config(config_path, [f"data.hr=[{data}]", *PROBE, *overrides])
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, "score", Path(out), Ranks(0, 1, torch.device(device)), resume=False)
        batch = next(iter(trainer._loader()))
        for _ in range(warmup):
            trainer._train_step(batch)
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            trainer._train_step(batch)
        _synchronize(device)
        return steps / (time.perf_counter() - start)


def _synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def choose(rates, minutes):
    """(preset, config path, speed key) from rates {preset: {speed key: steps/s}} and the score
    stage's minutes {preset: minutes}: the rule of this module's docstring."""
    for preset, config in CANDIDATES:
        key = max(rates[preset], key=rates[preset].get)
        if rates[preset][key] * 60 * minutes[preset] >= MIN_SCORE_STEPS or preset == CANDIDATES[-1][0]:
            return preset, config, key


def main(argv=None):
    from ecdp.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="folder of training photos")
    parser.add_argument("out", type=Path, help="folder for plan.json")
    parser.add_argument("--quick", action="store_true", help="the rehearsal: CPU, tiny crops, one timed step")
    args = parser.parse_args(argv)
    device = "cpu" if args.quick else "cuda"
    if not args.quick and not torch.cuda.is_available():
        print("no CUDA device: run with --quick for the CPU rehearsal", file=sys.stderr)
        return 1
    warmup, steps = (0, 1) if args.quick else (3, 10)
    rates, minutes = {}, {}
    for preset, config in CANDIDATES:
        minutes[preset] = load_config(config, []).train.minutes
        rates[preset] = {key: step_rate(config, args.data, [*keys, *(QUICK if args.quick else [])], device,
                                        warmup, steps)
                         for key, keys in SPEED_KEYS.items()}
        print(f"{preset}: " + ", ".join(f"{key} {rate:.2f} steps/s" for key, rate in rates[preset].items()),
              file=sys.stderr)
    preset, config, key = choose(rates, minutes)
    args.out.mkdir(parents=True, exist_ok=True)
    plan = dict(device=torch.cuda.get_device_name() if device == "cuda" else "cpu", rates=rates, minutes=minutes,
                min_score_steps=MIN_SCORE_STEPS, preset=preset, config=str(config), speed=key)
    (args.out / "plan.json").write_text(json.dumps(plan, indent=1) + "\n")
    print(f"CONFIG={shlex.quote(str(config))}")
    print(f"KEYS={shlex.quote(' '.join(SPEED_KEYS[key]))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
