"""configs/train_default_x4.sh with configs/small_x4.yaml, the one-command GPU training, rehearsed on
the CPU with a time budget of one step per stage, as on a bare GPU machine (no ecdp command)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from bench.gpu.train_plan import MIN_SCORE_STEPS, choose
from ecdp.modelfile import load_model
from ecdp.nets import PRESETS
from helpers import write_images

ROOT = Path(__file__).parent.parent
CPU_SIZED = ["encoder_stage.minutes=1e-9", "train.minutes=1e-9", "quality_stage.minutes=1e-9", "train.log_every=1",
             "train.batch=2", "data.crop=32", "data.sigma_crops=4"]


def bare_run(tmp_path, command, env=()):
    """Run `command` as a bare GPU machine would: python3 without the project installed, no
    PYTHONPATH, no ecdp command; return the finished process."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    python = bin_dir / "python3"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    environment = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", **dict(env)}
    environment.pop("PYTHONPATH", None)
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)


def rehearse(tmp_path, config, overrides):
    """Run the script without an installed ecdp command; return (exit code, output, OUT)."""
    data, out = tmp_path / "data", tmp_path / "out"
    write_images(data, [(64, 48), (48, 64), (72, 56)])
    result = bare_run(tmp_path, ["bash", str(ROOT / "configs" / "train_default_x4.sh"), str(data), str(out)],
                      {"CONFIG": str(config), "SET": " ".join(overrides)})
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


@pytest.mark.slow
def test_gpu_training_call_plans_trains_and_evaluates(tmp_path):
    """bench/gpu/train.sh --quick: the plan from measured steps/s, the three stages of the chosen
    config with its keys, then ecdp eval of the model on Set5/ and Set14/ folders."""
    data, evaluation, out = tmp_path / "data", tmp_path / "eval", tmp_path / "out"
    write_images(data, [(64, 48), (48, 64), (72, 56)])
    write_images(evaluation / "Set5", [(64, 48)])
    write_images(evaluation / "Set14", [(48, 64)], seed=1)
    result = bare_run(tmp_path, ["bash", str(ROOT / "bench" / "gpu" / "train.sh"), str(data), str(evaluation), str(out),
                                 "--quick"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    plan = json.loads((out / "plan.json").read_text())
    assert set(plan["rates"]) == {"tiny", "small"} and plan["preset"] in plan["rates"]
    _, model_config = load_model(out / "hybrid" / "model")
    assert model_config.net == PRESETS[plan["preset"]]
    scores = json.loads((out / "eval.json").read_text())
    assert "Set5" in json.dumps(scores) and "Set14" in json.dumps(scores)


def test_the_plan_takes_the_largest_preset_that_reaches_its_steps_at_its_fastest_keys():
    minutes = {"small": 3.75, "tiny": 2.0}   # 225 and 120 seconds of score matching
    fast = {"small": {"today": 4.0, "channels_last": 4.5}, "tiny": {"today": 20.0, "channels_last": 18.0}}
    preset, config, key = choose(fast, minutes)   # small: 4.5 steps/s x 225 s = 1012 steps
    assert (preset, config.name, key) == ("small", "small_x4.yaml", "channels_last")
    slow = {"small": {"today": 4.2, "channels_last": 3.0}, "tiny": {"today": 9.0, "channels_last": 10.0}}
    preset, config, key = choose(slow, minutes)   # small: 4.2 x 225 = 945 steps, under MIN_SCORE_STEPS
    assert (preset, config.name, key) == ("tiny", "default_x4.yaml", "channels_last")
    assert 945 < MIN_SCORE_STEPS <= 1012
