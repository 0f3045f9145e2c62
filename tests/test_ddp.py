import csv
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from ecdp.train import check_sync
from helpers import BASE, TINY, free_port, write_images


def train(tmp_path, out, processes):
    """`ecdp train` of the tiny config for 3 steps at a global batch of 4, under torchrun when processes > 1."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                 "--master-addr", "127.0.0.1", "--master-port", str(free_port())] if processes > 1
                else [sys.executable])
    command = [*launcher, "-m", "ecdp", "train", "--config", TINY, "--data", str(tmp_path / "images"),
               "--out", str(out), "--device", "cpu",
               "--set", *BASE, "train.batch=4", "train.steps=3", "train.check_sync_every=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_torchrun_two_processes_on_cpu(tmp_path):
    """Two processes write one run's files and end with the weights of one process on the same global batch."""
    write_images(tmp_path / "images", [(48, 40), (40, 56), (64, 48)])
    out = tmp_path / "out"
    train(tmp_path, out, processes=2)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    checkpoint = ["ema.safetensors", "model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"]
    assert files == sorted(["config.yaml", "log.csv", "model/config.json", "model/model.safetensors",
                            *(f"checkpoints/step-{s:08d}/{f}" for s in (2, 3) for f in checkpoint)])
    rows = list(csv.reader((out / "log.csv").open()))
    assert [r[0] for r in rows] == ["step", "1", "2", "3"]
    assert load_file(str(out / "model" / "model.safetensors")).keys()
    train(tmp_path, tmp_path / "single", processes=1)
    two, one = (load_file(str(folder / "model" / "model.safetensors")) for folder in (out, tmp_path / "single"))
    assert two.keys() == one.keys()
    for name in one:   # the same global batches, gradients averaged over the two halves: float rounding only
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-6, msg=name)


def _sync_worker(rank, folder):
    """Check equal weights (must pass), then weights that differ by 1e-7 on rank 1 (must raise)."""
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    try:
        layer = torch.nn.Linear(3, 2)
        torch.nn.init.ones_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
        check_sync(layer, step=6)
        with torch.no_grad():
            layer.bias[0] += 1e-7 * rank
        try:
            check_sync(layer, step=7)
        except RuntimeError as e:
            Path(folder, f"rank{rank}.txt").write_text(str(e))
    finally:
        dist.destroy_process_group()


def test_sync_check_catches_weights_that_differ(tmp_path):
    mp.start_processes(_sync_worker, args=(str(tmp_path),), nprocs=2, start_method="fork")
    for rank in range(2):
        assert "differ across processes after step 7" in (tmp_path / f"rank{rank}.txt").read_text()
