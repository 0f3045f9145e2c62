"""ecdp-run: built with CMake against this libtorch, it gives Python's image from an AOTI package.

Slow (a libtorch build and an AOTInductor compile): run with `python -m pytest -q -m slow tests/test_cpp_runner.py`.
"""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ecdp.export import ExportSpec, export_aoti
from ecdp.modelfile import load_model
from ecdp.upscaler import Upscaler
from helpers import LR_SIZE, pytorch_sr, save_export_model

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which("cmake") or not (shutil.which("c++") or shutil.which("g++")),
                       reason="needs cmake and a C++ compiler"),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(ecdp-run binary, model folder, package, work folder)."""
    work = tmp_path_factory.mktemp("cpp")
    build = work / "build"
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"],
                   check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "-j2"], check=True, capture_output=True)
    model = save_export_model(work / "model")
    (package,) = export_aoti(model, work / "tiny.pt2", ExportSpec(lr_size=LR_SIZE), device="cpu")
    return build / "ecdp-run", model, package, work


def lr_image(path, size=LR_SIZE, seed=3):
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return Image.open(path)


def ecdp_run(binary, *args):
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True)


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_seeded_run_matches_the_python_upscaler(setup):
    binary, model, package, work = setup
    image = lr_image(work / "in.ppm")
    result = ecdp_run(binary, package, work / "in.ppm", work / "out.ppm", "--seed", 5)
    assert result.returncode == 0, result.stderr
    reference = Upscaler.from_model(*load_model(model), seed=5).upscale(image)
    assert np.abs(pixels(Image.open(work / "out.ppm")) - pixels(reference)).max() <= 1


def test_noise_file_run_matches_pytorch(setup):
    binary, model, package, work = setup
    image = lr_image(work / "in2.ppm", seed=4)
    noise = torch.randn(1, 3, 4 * LR_SIZE[0], 4 * LR_SIZE[1], generator=torch.Generator().manual_seed(9))
    noise.numpy().astype("<f4").tofile(work / "noise.bin")
    result = ecdp_run(binary, package, work / "in2.ppm", work / "out2.ppm", "--noise", work / "noise.bin")
    assert result.returncode == 0, result.stderr
    lr = torch.from_numpy(pixels(image).astype(np.float32) / 255).permute(2, 0, 1)[None]
    reference = (pytorch_sr(model, lr, noise)[0].permute(1, 2, 0) * 255).round().numpy()
    assert np.abs(pixels(Image.open(work / "out2.ppm")) - reference).max() <= 1


def test_wrong_image_size_is_one_error_line_and_no_output(setup):
    binary, _, package, work = setup
    lr_image(work / "big.ppm", size=(16, 16))
    result = ecdp_run(binary, package, work / "big.ppm", work / "big_out.ppm")
    assert result.returncode == 1 and "--lr-size" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (work / "big_out.ppm").exists()
