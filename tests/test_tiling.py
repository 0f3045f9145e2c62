"""Tiled against untiled sampling of the tiny model: 40x40 LR in tiles of 24 overlapping by 8.

Bounds, from measurement (seeds 0 to 3 of image and noise, euler 2 steps, the tiny model of
test_upscaler; 4 steps give the same picture):

- Away from the overlap bands the tiled image differs from the untiled one by 0.011 to 0.018 at
  most (in [0, 1]; 0.015 to 0.026 with 4 steps). It is not 0 anywhere: GroupNorm takes its
  statistics over the tile, and the encoder's receptive field (61 3x3 convs) is wider than a tile.
  Bound: 0.04, about twice the worst value measured at 2 steps (10 levels of 255).
- Seams: the mean |gradient| across a tile edge over the mean |gradient| across all other lines.
  On the image it is 1.04 to 1.08, the same as the untiled image at those lines (prior noise
  dominates the gradient); bound 1.25. On the tiling error (tiled - untiled) it is 1.08 to 1.37,
  while stitching tiles without overlap gives 5.3 to 5.6; bound 2, and the stitched control must
  exceed 3, which shows the measure sees a seam when there is one.
"""
import pytest
import torch

from ecdp.speed import bf16_supported
from ecdp.tiling import sample_tiled, tile_starts
from ecdp.upscaler import Upscaler
from helpers import SCALE, recorded, save_tiny_model

SIZE, TILE, OVERLAP, STEPS = 40, 24, 8, 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Untiled, tiled (recording the network's inputs) and stitched-without-overlap samples of one image."""
    model = save_tiny_model(tmp_path_factory.mktemp("model"), steps=STEPS)
    coarse = torch.rand(1, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    y = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic").clamp(0, 1)
    tiled = recorded(model, tile=TILE, overlap=OVERLAP)
    return {"full": Upscaler.from_pretrained(model).sample(y), "tiled": tiled.sample(y), "upscaler": tiled,
            "stitched": Upscaler.from_pretrained(model, tile=SIZE // 2, overlap=0).sample(y), "y": y, "model": model}


def seam_ratio(x, lines):
    """Largest mean |gradient| across the given HR lines (rows and columns) over the mean across the others."""
    ratios = []
    for dim in (-1, -2):
        grad = x.diff(dim=dim).abs().transpose(dim, -1).mean(dim=(0, 1, 2))
        across = torch.zeros_like(grad, dtype=torch.bool)
        across[[line - 1 for line in lines]] = True
        ratios.append(grad[across].max() / grad[~across].mean())
    return max(ratios).item()


def tile_edges(tile, overlap):
    starts = tile_starts(SIZE, tile, overlap)
    return sorted({SCALE * s for s in starts[1:]} | {SCALE * (s + tile) for s in starts[:-1]})


def test_tile_starts_cover_evenly_with_the_overlap():
    assert tile_starts(40, 24, 8) == [0, 16]
    assert tile_starts(48, 24, 6) == [0, 12, 24]
    assert tile_starts(40, 20, 0) == [0, 20]
    assert tile_starts(16, 24, 6) == [0]
    for size in range(25, 200, 7):
        starts = tile_starts(size, 24, 6)
        assert starts[0] == 0 and starts[-1] == size - 24
        assert all(a + 24 - b >= 6 for a, b in zip(starts, starts[1:]))


def test_blending_is_a_partition_of_unity():
    """Tiles that return their noise unchanged give back the full noise: weights sum to 1, cuts line up."""
    z1 = torch.randn(2, 3, 4 * 37, 4 * 29, generator=torch.Generator().manual_seed(0))

    def solve_region(top, left, height, width):
        return z1[..., 4 * top: 4 * (top + height), 4 * left: 4 * (left + width)], 1

    z, nfe = sample_tiled(solve_region, (37, 29), 4, 16, 4)
    torch.testing.assert_close(z, z1)
    assert nfe == len(tile_starts(37, 16, 4)) * len(tile_starts(29, 16, 4))


def away_from_the_seams():
    """HR pixels outside every band where two tiles overlap."""
    starts = tile_starts(SIZE, TILE, OVERLAP)
    band = torch.zeros(SCALE * SIZE, dtype=torch.bool)
    for a, b in zip(starts, starts[1:]):
        band[SCALE * b: SCALE * (a + TILE)] = True
    away = ~band[:, None] & ~band[None, :]
    assert away.any() and band.any()
    return away


def test_tiled_matches_untiled_away_from_the_seams(runs):
    diff = (runs["tiled"] - runs["full"]).abs().amax(dim=(0, 1))
    assert diff[away_from_the_seams()].max() < 0.04


@pytest.mark.parametrize("options", [{"engine": "reference"}, {"precision": "fp32"},
                                     pytest.param({"precision": "bf16"}, marks=pytest.mark.skipif(
                                         not bf16_supported(), reason="oneDNN has no bf16 convolutions here"))],
                         ids=["reference", "fast-fp32", "fast-bf16"])
def test_every_engine_tiles_as_the_reference_does(runs, options):
    """Each engine's tiled image against its own untiled one: the same bound as the reference's."""
    y = runs["y"]
    full = Upscaler.from_pretrained(runs["model"], **options).sample(y)
    tiled = Upscaler.from_pretrained(runs["model"], tile=TILE, overlap=OVERLAP, **options).sample(y)
    diff = (tiled - full).abs().amax(dim=(0, 1))
    assert diff[away_from_the_seams()].max() < 0.04


def test_no_visible_seam(runs):
    edges = tile_edges(TILE, OVERLAP)
    assert seam_ratio(runs["tiled"], edges) < 1.25
    assert seam_ratio(runs["tiled"] - runs["full"], edges) < 2
    assert seam_ratio(runs["stitched"] - runs["full"], tile_edges(SIZE // 2, 0)) > 3


def test_network_never_sees_more_than_a_tile(runs):
    recorder, tiles = runs["upscaler"].resolver.net, len(tile_starts(SIZE, TILE, OVERLAP)) ** 2
    assert max(h * w for *_, h, w in recorder.encoded) <= TILE * TILE
    assert max(h * w for *_, h, w in recorder.denoised) <= (SCALE * TILE) ** 2
    assert len(recorder.encoded) == tiles
    assert runs["upscaler"].last_nfe == len(recorder.denoised) == tiles * STEPS
