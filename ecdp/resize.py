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
``A_h @ img @ A_w.T``: exact, differentiable, and exported to ONNX as MatMul only. Each row of a
matrix has a few non-zero taps (4 when upscaling, 4 s when downscaling by s), so a long side is
resized block by block, each block of outputs a product with the window of inputs it reads: memory
grows with the image, not with the square of its side.
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


DENSE_LIMIT = 2**20
"""Elements of the largest dense matrix a resize uses (8 MiB in float64): a side whose matrix would be
larger is resized in blocks of BLOCK output pixels, each a product with the input window it reads."""
BLOCK = 512
CACHED = 16
"""Sizes whose taps and dense matrices are kept: memory stays bounded however many sizes are seen."""


@lru_cache(maxsize=CACHED)
def _taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(cols, weights), each (out_size, taps): the 0-based input index and the float64 weight of each
    tap of each output pixel (MATLAB's ``contributions``, indices mirrored into the image), read-only."""
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
    cols.flags.writeable = weights.flags.writeable = False
    return cols, weights


def _block64(in_size: int, out_size: int, start: int, stop: int) -> tuple[int, np.ndarray]:
    """(first, matrix): the rows start..stop-1 of the (out_size, in_size) weight matrix, restricted to
    the input columns first.. that they read (a float64 (stop - start, window) array)."""
    cols, weights = _taps(in_size, out_size)
    cols, weights = cols[start:stop], weights[start:stop]
    first = int(cols.min())
    matrix = np.zeros((stop - start, int(cols.max()) + 1 - first), dtype=np.float64)
    np.add.at(matrix, (np.arange(stop - start)[:, None], cols - first), weights)  # mirrored taps may coincide
    return first, matrix


@lru_cache(maxsize=CACHED)
def _resize_matrix64(in_size: int, out_size: int) -> np.ndarray:
    """The (out_size, in_size) float64 weight matrix, read-only.

    Cached as numpy, not as a tensor, so that a first call under a tracer (torch.export's fake
    tensors) cannot leave a traced tensor in the cache.
    """
    first, matrix = _block64(in_size, out_size, 0, out_size)
    matrix = np.pad(matrix, ((0, 0), (first, in_size - first - matrix.shape[1])))
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
    """Resize ``img`` (..., H, W) to (..., *size) with MATLAB-style bicubic interpolation.

    Memory grows with the input and the result: a side whose weight matrix would hold more than
    DENSE_LIMIT elements is resized in blocks (see _resize_side).
    """
    out_h, out_w = size
    return _resize_side(_resize_side(img, -2, out_h), -1, out_w)


def _resize_side(img: Tensor, dim: int, out_size: int) -> Tensor:
    """``img`` resized along ``dim`` (-2: rows, -1: columns) to out_size: one product with the dense
    matrix when it is small, else one per block of BLOCK outputs with the input window it reads."""
    in_size = img.shape[dim]
    if in_size * out_size <= DENSE_LIMIT:
        blocks = [(0, resize_matrix(in_size, out_size, dtype=img.dtype, device=img.device))]
    else:
        blocks = []
        for start in range(0, out_size, BLOCK):
            first, matrix = _block64(in_size, out_size, start, min(start + BLOCK, out_size))
            blocks.append((first, torch.tensor(matrix, dtype=img.dtype, device=img.device)))
    parts = []
    for first, a in blocks:
        window = img if a.shape[1] == in_size else img.narrow(dim, first, a.shape[1])
        parts.append(a @ window if dim == -2 else window @ a.T)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


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
