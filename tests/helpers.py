"""What several test modules share: small models, images, training settings, processes and ports.

Test modules import these from here (never from one another); the shared fixtures are in conftest.py.
"""
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from ecdp.cli import main
from ecdp.modelfile import ModelConfig, load_model, save_model
from ecdp.nets import PRESETS, ResBlock, build
from ecdp.pipeline import SuperResolver
from ecdp.sampling import SamplerSpec
from ecdp.upscaler import Upscaler

ROOT = Path(__file__).parent.parent
SCALE = 4
TINY = str(ROOT / "configs" / "tiny.yaml")
"""The tiny training config."""
BASE = ["data.crop=32", "train.batch=2", "data.workers=0", "data.sigma_crops=4", "train.log_every=1",
        "train.checkpoint_every=2", "train.warmup=2"]
"""Training settings small enough for a test."""
LR_SIZE = (8, 8)
"""The exporters' LR size in the tests."""


def randomize_zero_convs(net: nn.Module, std: float = 0.05, bias: bool = False) -> nn.Module:
    """Give the zero-initialized conv2 of every residual block random weights (and biases), so that
    every block reaches the output; returns net."""
    for module in net.modules():
        if isinstance(module, ResBlock):
            nn.init.normal_(module.conv2.weight, std=std)
            if bias:
                nn.init.normal_(module.conv2.bias, std=std)
    return net


def save_tiny_model(folder, net=PRESETS["tiny"], *, seed: int = 0, conv2_std: float = 0.05,
                    head_std: float | None = 0.05, **config) -> Path:
    """A tiny model with non-trivial outputs saved in `folder`: conv2 (zero-init) and, with head_std,
    the head get small random weights; config overrides ModelConfig (default sampler: euler, 2 steps,
    log-SNR grid; scale SCALE).

    With the default head the network outputs are close to 0, and the hybrid ODE then leaves the
    prior noise almost unchanged, so the image would hardly depend on the network.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = randomize_zero_convs(build(net), conv2_std)
        if head_std is not None:
            nn.init.normal_(model.denoiser.head_conv.weight, std=head_std)
    config = {"solver": "euler", "steps": 2, "grid": "logsnr", **config}
    save_model(folder, model, ModelConfig(net=net, scale=SCALE, **config))
    return folder


def save_export_model(folder, seed: int = 0) -> Path:
    """The exporters' tiny model: conv2 at std 0.02, sigma 0.2, heun 2 steps on the log-SNR grid."""
    return save_tiny_model(folder, seed=seed, conv2_std=0.02, head_std=None, sigma=0.2, solver="heun", steps=2)


def recorded(model, **options) -> Upscaler:
    """An Upscaler (reference engine: the network is called as it is) whose network records the
    shapes its encoder and its denoiser are given, in ``net.encoded`` and ``net.denoised``."""
    net, config = load_model(model)
    net.encoded, net.denoised = [], []
    net.encoder.register_forward_pre_hook(lambda module, args: net.encoded.append(tuple(args[0].shape)))
    net.denoiser.register_forward_pre_hook(lambda module, args: net.denoised.append(tuple(args[0].shape)))
    return Upscaler.from_model(net, config, **{"engine": "reference", **options})


def random_uint8(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def image_of_mode(mode: str, w: int = 12, h: int = 10) -> Image.Image:
    """A random PIL image of `mode` (P: 16 colors)."""
    if mode == "I;16":
        return Image.fromarray(np.random.default_rng(0).integers(0, 65536, (h, w), dtype=np.uint16))
    rgba = Image.fromarray(random_uint8((h, w, 4)))
    if mode == "P":
        return rgba.convert("RGB").quantize(16)
    return rgba.convert(mode)


def write_images(folder, sizes, seed: int = 0, mode: str = "RGB") -> list[Path]:
    """Smooth random images of the given (width, height) sizes as PNGs in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (w, h) in enumerate(sizes):
        small = Image.fromarray(rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8))
        path = folder / f"img{i}.png"
        small.resize((w, h), Image.BICUBIC).convert(mode).save(path)
        paths.append(path)
    return paths


def truncated_jpeg(folder, name: str = "cut.jpg", seed: int = 5) -> Path:
    """A JPEG cut to half its bytes: its header (and PIL's check) is fine, decoding it fails."""
    write_images(folder, [(64, 64)], seed=seed)
    png = folder / "img0.png"
    path = folder / name
    Image.open(png).save(path, quality=90)
    png.unlink()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def upscale(model, *args) -> int:
    """``ecdp upscale ARGS --checkpoint MODEL --device cpu`` in this process; its exit status."""
    return main(["upscale", *map(str, args), "--checkpoint", model, "--device", "cpu"])


def files_under(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def one_line(capsys) -> str:
    """The one line written to stderr (fails on more or fewer)."""
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def example_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(lr, noise) for the tiny model at LR_SIZE, as float32 tensors."""
    generator = torch.Generator().manual_seed(seed)
    lr = torch.rand(1, 3, *LR_SIZE, generator=generator)
    return lr, torch.randn(1, 3, 4 * LR_SIZE[0], 4 * LR_SIZE[1], generator=generator)


def pytorch_sr(model, lr, noise, **overrides) -> torch.Tensor:
    """The plain PyTorch pipeline's output: the reference every exported form is held to."""
    net, config = load_model(model)
    with torch.no_grad():
        return SuperResolver(net, config, SamplerSpec.of(config, **overrides))(lr, noise)


def tensors(out, step: int) -> dict:
    """The model, EMA and optimizer tensors of a training run's checkpoint at `step`."""
    folder = Path(out) / "checkpoints" / f"step-{step:08d}"
    return {name: load_file(str(folder / f"{name}.safetensors")) for name in ("model", "ema", "optimizer")}


def dead_pid() -> int:
    """The id of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
