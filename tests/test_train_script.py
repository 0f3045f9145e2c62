"""configs/train_default_x4.sh with configs/small_x4.yaml, the one-command GPU training, rehearsed on
the CPU with a time budget of one step per stage, as on a bare GPU machine (no ecdp command)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from ecdp.modelfile import load_model
from ecdp.nets import PRESETS
from helpers import write_images

ROOT = Path(__file__).parent.parent
CPU_SIZED = ["encoder_stage.minutes=1e-9", "train.minutes=1e-9", "quality_stage.minutes=1e-9", "train.log_every=1",
             "train.batch=2", "data.crop=32", "data.sigma_crops=4"]


def rehearse(tmp_path, config, overrides):
    """Run the script without an installed ecdp command; return (exit code, output)."""
    data, out, bin_dir = tmp_path / "data", tmp_path / "out", tmp_path / "bin"
    write_images(data, [(64, 48), (48, 64), (72, 56)])
    bin_dir.mkdir()
    python = bin_dir / "python3"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "CONFIG": str(config), "SET": " ".join(overrides)}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(["bash", str(ROOT / "configs" / "train_default_x4.sh"), str(data), str(out)],
                            env=env, capture_output=True, text=True, timeout=600)
    return result.returncode, result.stdout + result.stderr, out


@pytest.mark.slow
def test_gpu_training_script_trains_the_three_stages_of_the_small_model(tmp_path):
    config = ROOT / "configs" / "small_x4.yaml"
    code, output, out = rehearse(tmp_path, config, CPU_SIZED)
    assert code == 0, output
    assert (out / "encoder" / "encoder.safetensors").is_file()
    for name in ("hybrid-score", "hybrid"):
        _, model_config = load_model(out / name / "model")
        assert model_config.net == PRESETS["small"] and model_config.scale == 4
        assert (model_config.solver, model_config.steps, model_config.grid) == ("heun", 3, "logsnr")
        assert (out / name / "model" / "model.safetensors").stat().st_size < 25e6
    for name in ("encoder", "hybrid-score", "hybrid"):
        assert (out / f"{name}.log").is_file() and (out / name / "log.csv").read_text().count("\n") == 2
    quality = load_file(str(out / "hybrid" / "model" / "model.safetensors"))
    score = load_file(str(out / "hybrid-score" / "model" / "model.safetensors"))
    assert quality.keys() == score.keys() and any((quality[k] != score[k]).any() for k in quality)


def test_a_failing_stage_stops_the_script_and_shows_its_log(tmp_path):
    code, output, out = rehearse(tmp_path, ROOT / "configs" / "small_x4.yaml", [*CPU_SIZED, "train.no_such_key=1"])
    assert code != 0
    assert "stage encoder failed" in output and "unknown config key 'train.no_such_key'" in output
    assert not (out / "hybrid-score").exists()
