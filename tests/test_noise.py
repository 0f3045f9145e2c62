"""The prior noise as a function of the seed and the HR position, and tiled sampling with bounded memory."""
import pytest
import torch

import ecdp.pipeline as pipeline
from ecdp import tiling
from ecdp.errors import UserError
from ecdp.resize import upscale
from ecdp.sde import NOISE_BLOCK, seeded_prior
from ecdp.upscaler import AUTO_TILE, Upscaler
from helpers import SCALE, save_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


def test_one_block_image_gets_the_plain_draw_of_the_exported_runners():
    shape = (2, 3, NOISE_BLOCK, 256)
    expected = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    assert torch.equal(seeded_prior(7, shape), expected)
    assert torch.equal(seeded_prior(7, shape, (5, 9, 30, 40)), expected[..., 5:35, 9:49])


@pytest.mark.parametrize("region", [(0, 0, 64, 64), (500, 700, 100, 90), (1000, 1, 200, 1199)])
def test_any_region_of_a_large_image_is_drawn_alone_as_in_the_whole(region):
    shape = (2, 3, 1200, 1300)
    whole = seeded_prior(3, shape)
    top, left, h, w = region
    assert torch.equal(seeded_prior(3, shape, region), whole[..., top:top + h, left:left + w])
    assert abs(whole.mean().item()) < 0.01 and abs(whole.std().item() - 1) < 0.01
    assert not torch.equal(whole[0], whole[1])
    assert not torch.equal(seeded_prior(4, shape, region), seeded_prior(3, shape, region))


class IdentitySolve:
    """In place of ecdp.sampling.solve in the resolver: returns the prior noise as it is and records
    the noise shapes it is given."""

    def __init__(self):
        self.shapes = []

    def __call__(self, model, z1, cond, sampler, callback=None):
        self.shapes.append(tuple(z1.shape))
        return z1, 1


def identity_upscaler(model, monkeypatch, **options):
    """(Upscaler, its IdentitySolve): the reference engine with every solve an identity."""
    solve = IdentitySolve()
    monkeypatch.setattr(pipeline, "solve", solve)
    return Upscaler.from_pretrained(model, engine="reference", **options), solve


def test_tiles_draw_their_own_noise_and_blend_to_the_untiled_image(model, monkeypatch):
    """The 12000x12000 case in small: with tiles, no noise larger than a tile is ever drawn, and the
    tiled image of an identity solve is the untiled one (noise per region, mu per region, weights summing to 1)."""
    y = torch.rand(1, 3, 150, 170, generator=torch.Generator().manual_seed(0))
    tiled, solve = identity_upscaler(model, monkeypatch, tile=32, overlap=8)
    x = tiled.sample(y)
    assert max(h * w for *_, h, w in solve.shapes) <= (SCALE * 32) ** 2
    expected = (upscale(y, SCALE) + tiled.resolver.sigma * seeded_prior(0, (1, 3, SCALE * 152, SCALE * 176))
                [..., : SCALE * 150, : SCALE * 170]).clamp(0, 1)
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(identity_upscaler(model, monkeypatch)[0].sample(y), expected, atol=1e-5, rtol=0)


def test_tile_order_does_not_change_the_image(model, monkeypatch):
    y = torch.rand(1, 3, 140, 140, generator=torch.Generator().manual_seed(1))
    up = Upscaler.from_pretrained(model, tile=48, overlap=12)
    forward = up.sample(y)
    grid = tiling.tile_grid
    monkeypatch.setattr(tiling, "tile_grid", lambda *args: grid(*args)[::-1])
    torch.testing.assert_close(up.sample(y), forward, atol=1e-6, rtol=0)


def test_large_images_are_tiled_without_asking(model, monkeypatch):
    monkeypatch.setattr("ecdp.upscaler.AUTO_TILE_ABOVE", 40 * 40)
    up, solve = identity_upscaler(model, monkeypatch)
    up.sample(torch.rand(1, 3, 48, 40))
    assert len(solve.shapes) == 1
    up.sample(torch.rand(1, 3, 48, 48))
    assert len(solve.shapes) == 1 + 1 and solve.shapes[-1] == (1, 3, SCALE * 48, SCALE * 48)
    assert AUTO_TILE > 48


@pytest.mark.parametrize("tile, advice", [(None, "sample it in tiles (--tile PX, e.g. --tile 128)"),
                                          (16, "pass a smaller tile than 16 LR pixels")])
def test_out_of_memory_is_one_sentence_that_suggests_tiles(model, tile, advice, monkeypatch):
    up = Upscaler.from_pretrained(model, tile=tile)

    def allocate(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:119] . DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 27648000000 bytes.")
    monkeypatch.setattr(pipeline, "solve", allocate)
    with pytest.raises(UserError, match=r"^out of memory on cpu for a 40x32 image \(its result alone takes 0.2 MB\); "
                       + advice.replace("(", r"\(").replace(")", r"\)")):
        up.sample(torch.rand(1, 3, 32, 40))


def test_other_runtime_errors_pass_through(model, monkeypatch):
    up = Upscaler.from_pretrained(model)

    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")
    monkeypatch.setattr(pipeline, "solve", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        up.sample(torch.rand(1, 3, 8, 8))


def test_a_result_larger_than_the_memory_is_refused_before_the_work(model, monkeypatch):
    """No tile helps when the result itself does not fit: the sentence says so, before anything runs."""
    up = Upscaler.from_pretrained(model)
    monkeypatch.setattr(pipeline, "solve", lambda *args, **kwargs: pytest.fail("the solve ran"))
    monkeypatch.setattr("ecdp.memory.available_memory", lambda device=None: 10**5)
    with pytest.raises(UserError, match=r"^the 160x128 result of a 40x32 image alone needs 0.2 MB of memory and "
                                        r"0.1 MB are available$"):
        up.sample(torch.rand(1, 3, 32, 40))
