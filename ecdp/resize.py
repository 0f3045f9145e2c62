"""MATLAB-style bicubic resize: the project's single resize (docs/design.md section 3).

docs/design.md section 3 fixes one resize for the whole project: ``mu(y) = up(y)`` of eq. 5 is the
bicubic upsampling of the LR image, and the degradation used for training and benchmarks is
the matching bicubic downscale. Both follow MATLAB's ``imresize(..., 'bicubic')``:

- Keys cubic kernel with ``a = -0.5``;
- output pixel ``x`` (1-based) maps to input coordinate ``u = x / s + 0.5 * (1 - 1 / s)``
  where ``s = out_size / in_size``;
- when downscaling (``s < 1``) the kernel is stretched by ``1 / s`` (antialiasing);
- taps outside the image are folded back by symmetric mirroring of indices;
- each output pixel's weights are normalized to sum to 1.

A resize between fixed sizes is linear and separable, so it is written as two matrix products,
``A_h @ img @ A_w.T``: exact, differentiable, and exported to ONNX as MatMul only.
"""
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

__all__ = ["resize_matrix", "resize", "upscale", "downscale", "mod_crop"]


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = -0.5."""
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    near = 1.5 * ax3 - 2.5 * ax2 + 1.0
    far = -0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0
    return np.where(ax <= 1.0, near, np.where(ax <= 2.0, far, 0.0))


@lru_cache(maxsize=None)
def _resize_matrix64(in_size: int, out_size: int) -> np.ndarray:
    """The (out_size, in_size) float64 weight matrix (MATLAB's ``contributions``), read-only.

    Cached as numpy, not as a tensor, so that a first call under a tracer (torch.export's fake
    tensors) cannot leave a traced tensor in the cache.
    """
    scale = out_size / in_size
    stretch = min(scale, 1.0)  # antialiasing: kernel is 1/scale wider when downscaling
    width = 4.0 / stretch
    u = np.arange(1, out_size + 1, dtype=np.float64) / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = left[:, None] + np.arange(int(np.ceil(width)) + 2)
    # MATLAB's h(x) = s * cubic(s * x); the constant factor s cancels in the normalization.
    weights = _cubic(stretch * (u[:, None] - taps))
    weights /= weights.sum(axis=1, keepdims=True)
    # Symmetric mirroring of 1-based indices: 1..n, n..1, repeated.
    mirror = np.concatenate([np.arange(in_size), np.arange(in_size)[::-1]])
    cols = mirror[(taps.astype(np.int64) - 1) % (2 * in_size)]
    rows = np.broadcast_to(np.arange(out_size)[:, None], cols.shape)
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    np.add.at(matrix, (rows, cols), weights)
    matrix.flags.writeable = False
    return matrix


def resize_matrix(in_size: int, out_size: int, *, dtype=torch.float32, device=None) -> Tensor:
    """1-D bicubic resize weights, shape (out_size, in_size); ``A @ v`` resizes a vector ``v``.

    Under torch.compile / torch.export the result is a constant of the graph.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize sizes must be positive, got {in_size} -> {out_size}.")
    return torch.tensor(_resize_matrix64(int(in_size), int(out_size)), dtype=dtype, device=device)


# What torch.compiler.assume_constant_result(resize_matrix) does, without importing torch._dynamo
# (0.6 s) whenever ecdp starts; tests/test_resize.py checks that the decorator still works this way.
resize_matrix._dynamo_marked_constant = True


def resize(img: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize ``img`` (..., H, W) to (..., *size) with MATLAB-style bicubic interpolation."""
    out_h, out_w = size
    a_h = resize_matrix(img.shape[-2], out_h, dtype=img.dtype, device=img.device)
    a_w = resize_matrix(img.shape[-1], out_w, dtype=img.dtype, device=img.device)
    return a_h @ img @ a_w.T


def upscale(y: Tensor, scale: int) -> Tensor:
    """Bicubic upsampling by an integer ``scale``: the method's mu(y) = up(y) (eq. 5)."""
    return resize(y, (y.shape[-2] * scale, y.shape[-1] * scale))


def downscale(x: Tensor, scale: int) -> Tensor:
    """Antialiased bicubic downscaling by an integer ``scale``: the degradation x -> y."""
    h, w = x.shape[-2], x.shape[-1]
    if h % scale or w % scale:
        msg = f"downscale needs H and W divisible by {scale}, got {h}x{w} (use mod_crop first)."
        raise ValueError(msg)
    return resize(x, (h // scale, w // scale))


def mod_crop(x: Tensor, scale: int) -> Tensor:
    """Crop the last two dims (top-left anchored) down to multiples of ``scale``."""
    h, w = x.shape[-2], x.shape[-1]
    return x[..., : h - h % scale, : w - w % scale]
