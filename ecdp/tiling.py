"""Tiled sampling: overlapping LR tiles, each with the prior noise of its own region, seams blended by smooth windows.

Each tile draws the noise of its HR region alone (``ecdp.sde.seeded_prior``), the same numbers the
untiled image has there, so neighbouring tiles follow the same noise where they overlap and the
result does not depend on the order of the tiles. Across an overlap one tile's weight falls as a
raised cosine while the next one's rises; the weights are normalized to sum to 1 per axis. Tiles
are solved one at a time, so the network and the noise never take more than one tile; the one
full-size buffer is the blended result.
"""
import math
from typing import Callable

import torch


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length `tile` covering `size`, evenly spread, overlapping by at least `overlap`."""
    if size <= tile:
        return [0]
    count = math.ceil((size - overlap) / (tile - overlap))
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(row index, column index, top, left) of every tile of an LR image, row by row."""
    rows, cols = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    return [(i, j, top, left) for i, top in enumerate(rows) for j, left in enumerate(cols)]


def sample_tiled(solve_region: Callable, size: tuple[int, int], scale: int, tile: int, overlap: int
                 ) -> tuple[torch.Tensor, int]:
    """Blend solve_region(top, left, height, width) -> (x, nfe) over the tiles of an LR image; return (x, total nfe).

    size is the LR (height, width); a region is in LR pixels and x (B,C,scale height,scale width)
    its HR result. Returns the blended (B,C,scale size[0],scale size[1]) in x's dtype and device.
    """
    height, width = size
    rows, cols = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    row_weights, col_weights = _weights(rows, tile, height, scale), _weights(cols, tile, width, scale)
    total, nfe = None, 0
    for i, j, top, left in tile_grid(height, width, tile, overlap):
        x, n = solve_region(top, left, min(tile, height), min(tile, width))
        if total is None:
            total = x.new_zeros(*x.shape[:2], scale * height, scale * width)
        hr = (slice(scale * top, scale * top + x.shape[-2]), slice(scale * left, scale * left + x.shape[-1]))
        total[(..., *hr)] += torch.outer(row_weights[i], col_weights[j]).to(x) * x
        nfe += n
    return total, nfe


def _weights(starts, tile, size, scale):
    """HR windows of the tiles along one axis, divided by their sum at each pixel (so they sum to 1)."""
    windows = [_window(starts, k, tile, size, scale) for k in range(len(starts))]
    total = torch.zeros(scale * size, dtype=torch.float64)
    for start, w in zip(starts, windows):
        total[scale * start: scale * start + len(w)] += w
    return [w / total[scale * start: scale * start + len(w)] for start, w in zip(starts, windows)]


def _window(starts, k, tile, size, scale):
    """HR weights of tile k along one axis: 1 inside, raised-cosine ramps over the overlaps with its neighbours."""
    length = scale * min(tile, size)
    w = torch.ones(length, dtype=torch.float64)
    if k > 0:
        n = scale * (starts[k - 1] + tile - starts[k])
        w[:n] *= _ramp(n)
    if k < len(starts) - 1:
        n = scale * (starts[k] + tile - starts[k + 1])
        w[length - n:] *= _ramp(n).flip(0)
    return w


def _ramp(n):
    """Raised cosine rising over n pixels, sampled at pixel centres: never 0, and ramp + flipped ramp = 1."""
    return 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(n, dtype=torch.float64) + 0.5) / n)
