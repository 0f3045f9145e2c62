"""TensorRT: the one-sentence refusal without TensorRT or a GPU, and the builder where they exist."""
import sys

import numpy as np
import pytest
import torch

from ecdp.errors import UserError
from ecdp.export import tensorrt_upscaler
from ecdp.export.cli import main
from ecdp.export.trt_plan import INSTALL, NO_GPU
from helpers import example_batch, pytorch_sr, save_export_model

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="building a plan needs a CUDA GPU")


@pytest.fixture
def tensorrt():
    return pytest.importorskip("tensorrt")


@pytest.fixture
def without_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail


def trt_export(*args):
    return main(["--trt", *map(str, args)])


def test_without_tensorrt_the_command_says_what_to_install(without_tensorrt, tmp_path, capsys):
    plan = tmp_path / "model.plan"
    assert trt_export(tmp_path / "model", "-o", plan, "--lr-size", "8x8") == 1
    assert capsys.readouterr().err.strip() == f"ecdp-export: error: {INSTALL}"
    assert not plan.exists()


def test_without_tensorrt_the_upscaler_says_what_to_install(without_tensorrt, tmp_path):
    with pytest.raises(UserError, match="pip install tensorrt"):
        tensorrt_upscaler(tmp_path / "model.plan")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_gpu_the_command_says_so(tensorrt, tmp_path, capsys):
    assert trt_export(tmp_path / "model", "-o", tmp_path / "model.plan") == 1
    assert capsys.readouterr().err.strip() == f"ecdp-export: error: {NO_GPU}"


@pytest.fixture
def tiny_model(tmp_path):
    return save_export_model(tmp_path / "model")


def plan_sr(plan, lr, seed):
    return tensorrt_upscaler(plan, seed=seed).upscale(lr)


@needs_gpu
def test_fp32_plan_matches_pytorch_and_writes_the_timing_cache(tensorrt, tiny_model, tmp_path):
    plan, cache = tmp_path / "model.plan", tmp_path / "timing.cache"
    assert trt_export(tiny_model, "-o", plan, "--lr-size", "8x8", "--timing-cache", cache) == 0
    assert plan.stat().st_size > 0 and cache.stat().st_size > 0
    lr, _ = example_batch()
    noise = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    reference = pytorch_sr(tiny_model, lr, noise)
    assert (plan_sr(plan, lr, seed=7) - reference).abs().max() <= 1e-2  # TF32 convolutions


@needs_gpu
def test_fp16_plan_from_an_onnx_file_stays_close(tensorrt, tiny_model, tmp_path):
    onnx_path, plan = tmp_path / "fp16.onnx", tmp_path / "fp16.plan"
    assert main(["--onnx", str(tiny_model), "-o", str(onnx_path), "--lr-size", "8x8", "--fp16"]) == 0
    assert trt_export(onnx_path, "-o", plan) == 0
    lr, _ = example_batch()
    noise = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    difference = (plan_sr(plan, lr, seed=0) - pytorch_sr(tiny_model, lr, noise)).abs()
    assert float(difference.mean()) <= 1e-2 and np.isfinite(difference.numpy()).all()
