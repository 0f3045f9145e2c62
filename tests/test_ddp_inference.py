"""``ecdp upscale`` and ``ecdp eval`` under torchrun with 2 processes on the CPU (gloo)."""
import os
import subprocess
import sys

from PIL import Image

from ecdp.ranks import Ranks
from helpers import free_port, random_uint8, save_tiny_model


def torchrun(*args, cwd):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), "-m", "ecdp", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def single(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ecdp", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_every_item_goes_to_exactly_one_rank():
    items = list(range(7))
    parts = [Ranks(rank, 3, "cpu").share(items) for rank in range(3)]
    assert sorted(sum(parts, [])) == items and parts[0] == [0, 3, 6]


def test_upscale_splits_files_and_counts_every_ranks_failures(tmp_path):
    model = save_tiny_model(tmp_path / "model", steps=1)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        Image.fromarray(random_uint8((8, 8 + i, 3), seed=i)).save(images / f"img{i}.png")
    inputs = sorted(images.iterdir())
    result = torchrun("upscale", *inputs, "-o", tmp_path / "out", "--checkpoint", model, "--device", "cpu",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outputs == [f"img{i}.png" for i in range(6)]
    for i in range(6):
        assert Image.open(tmp_path / "out" / f"img{i}.png").size == (4 * (8 + i), 32)
    (images / "broken.png").write_text("not an image\n")
    result = torchrun("upscale", images / "broken.png", *inputs, "-o", tmp_path / "again", "--checkpoint", model,
                      "--device", "cpu", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.count("broken.png: not a readable image") == 1
    assert "1 of 7 images failed" in result.stderr
    assert len(list((tmp_path / "again").iterdir())) == 6


def table(stdout):
    """The printed table without the seconds column (the last one of each image row)."""
    rows = []
    for line in stdout.splitlines():
        cells = line.split()
        rows.append(" ".join(cells[:-1]) if "ECDP" in cells else line.rstrip())
    return rows


def test_eval_prints_the_same_table_and_means_as_one_process(tmp_path):
    model = save_tiny_model(tmp_path / "model", steps=1)
    data = tmp_path / "hr"
    data.mkdir()
    for i in range(3):
        Image.fromarray(random_uint8((32, 32 + 4 * i, 3), seed=i)).save(data / f"hr{i}.png")
    args = ("eval", "--checkpoint", model, "--data", data, "--json", "scores.json")
    one = single(*args, cwd=tmp_path)
    two = torchrun(*args, cwd=tmp_path)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert table(two.stdout) == table(one.stdout)
    assert len([line for line in one.stdout.splitlines() if line.startswith("mean")]) == 1
