"""AOTInductor: the package of the full solve gives PyTorch's image from Python; argument checks."""
import pytest
import torch

from ecdp.export.cli import main
from helpers import example_batch, pytorch_sr, save_export_model


def quantized(x):
    return (x.clamp(0, 1) * 255).round()


@pytest.mark.slow
def test_package_matches_pytorch_within_one_level(tmp_path):
    model, package = save_export_model(tmp_path / "model"), tmp_path / "tiny.pt2"
    assert main(["--aoti", str(model), "-o", str(package), "--lr-size", "8x8", "--device", "cpu"]) == 0
    compiled = torch._inductor.aoti_load_package(str(package))
    lr, noise = example_batch()
    sr = compiled(lr, noise)
    assert (quantized(sr) - quantized(pytorch_sr(model, lr, noise))).abs().max() <= 1
    meta = compiled.get_metadata()
    assert meta["ecdp.lr_size"] == "8x8" and meta["ecdp.scale"] == "4" and meta["ecdp.device"] == "cpu"


def test_output_must_be_a_pt2_file(tmp_path, capsys):
    model = save_export_model(tmp_path / "model")
    assert main(["--aoti", str(model), "-o", str(tmp_path / "tiny.so"), "--device", "cpu"]) == 1
    assert ".pt2" in capsys.readouterr().err and not (tmp_path / "tiny.so").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_one_sentence(tmp_path, capsys):
    model = save_export_model(tmp_path / "model")
    assert main(["--aoti", str(model), "-o", str(tmp_path / "tiny.pt2"), "--device", "cuda"]) == 1
    assert "CUDA" in capsys.readouterr().err and not (tmp_path / "tiny.pt2").exists()
