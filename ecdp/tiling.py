"""Tiled sampling: overlapping LR tiles, one shared noise tensor, seams blended by smooth windows.

Each tile is solved with the prior noise cut from ONE full-size tensor, so neighbouring tiles follow
the same noise where they overlap. Across an overlap one tile's weight falls as a raised cosine while
the next one's rises, and the sum is normalized by the sum of weights. Tiles are solved one at a
time, so the network never sees more than one tile.
"""
import math

import torch


def tile_starts(size, tile, overlap):
    """Start offsets of tiles of length `tile` covering `size`, evenly spread, overlapping by at least `overlap`."""
    if size <= tile:
        return [0]
    count = math.ceil((size - overlap) / (tile - overlap))
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def sample_tiled(solve_tile, y, z1, scale, tile, overlap):
    """Blend solve_tile(y_tile, z1_tile) -> (z_tile, nfe) over the tiles of y; return (z, total nfe).

    y is (B,3,h,w), z1 the prior noise of the whole image (B,3,scale h,scale w); tile and overlap are
    in LR pixels.
    """
    rows = tile_starts(y.shape[-2], tile, overlap)
    cols = tile_starts(y.shape[-1], tile, overlap)
    total = torch.zeros_like(z1)
    weight = z1.new_zeros(z1.shape[-2:])
    nfe = 0
    for i, top in enumerate(rows):
        for j, left in enumerate(cols):
            lr = (slice(top, top + tile), slice(left, left + tile))
            hr = tuple(slice(scale * s.start, scale * s.stop) for s in lr)
            z, n = solve_tile(y[(..., *lr)], z1[(..., *hr)])
            w = torch.outer(_window(rows, i, tile, y.shape[-2], scale),
                            _window(cols, j, tile, y.shape[-1], scale)).to(z1)
            total[(..., *hr)] += w * z
            weight[hr] += w
            nfe += n
    return total / weight, nfe


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
