import dataclasses

import numpy as np
import pytest
import torch

from ecdp.errors import UserError
from ecdp.nets import PRESETS
from ecdp.resize import upscale
from ecdp.upscaler import Upscaler
from helpers import SCALE, image_of_mode, random_uint8, recorded, save_tiny_model

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def upscaler(model):
    return Upscaler.from_pretrained(model)





@pytest.mark.parametrize("mode, out_mode", [("RGB", "RGB"), ("L", "L"), ("RGBA", "RGBA"), ("LA", "LA"),
                                            ("P", "RGB"), ("I;16", "I;16")])
def test_pil_images_keep_their_mode(upscaler, mode, out_mode):
    image = image_of_mode(mode)
    out = upscaler.upscale(image)
    assert out.mode == out_mode and out.size == (SCALE * image.width, SCALE * image.height)


def test_palette_with_transparency_comes_back_rgba(upscaler):
    image = image_of_mode("P")
    image.info["transparency"] = 0
    assert upscaler.upscale(image).mode == "RGBA"


def test_alpha_is_bicubic_upscaled(upscaler):
    image = image_of_mode("RGBA")
    alpha = torch.from_numpy(np.asarray(image)[..., 3].astype(np.float32) / 255)
    expected = (upscale(alpha[None], SCALE).clamp(0, 1) * 255).round().to(torch.uint8)[0].numpy()
    np.testing.assert_array_equal(np.asarray(upscaler.upscale(image))[..., 3], expected)


def test_sixteen_bit_keeps_sixteen_bit_levels(upscaler):
    out = np.asarray(upscaler.upscale(image_of_mode("I;16")))
    assert out.dtype == np.uint16 and np.any(out % 257)


@pytest.mark.parametrize("shape", [(10, 12), (10, 12, 3), (10, 12, 4)])
def test_arrays_keep_their_layout(upscaler, shape):
    out = upscaler.upscale(random_uint8(shape))
    assert out.dtype == np.uint8 and out.shape == (SCALE * 10, SCALE * 12, *shape[2:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tensors_keep_batch_and_dtype(upscaler, dtype):
    y = torch.rand(2, 3, 8, 12, dtype=dtype, generator=torch.Generator().manual_seed(0))
    out = upscaler.upscale(y)
    assert out.shape == (2, 3, SCALE * 8, SCALE * 12) and out.dtype == dtype
    assert 0 <= out.min() and out.max() <= 1


def test_rejects_unsupported_inputs(upscaler):
    with pytest.raises(ValueError, match="HxWx4"):
        upscaler.upscale(random_uint8((10, 12, 2)))
    with pytest.raises(ValueError, match="B, 3, h, w"):
        upscaler.upscale(torch.rand(3, 8, 8))
    with pytest.raises(TypeError):
        upscaler.upscale([[0]])


def test_same_seed_same_image_other_seed_other_image(model):
    y = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    first = Upscaler.from_pretrained(model, seed=1)
    a, b = first.sample(y), first.sample(y)
    c = Upscaler.from_pretrained(model, seed=1).sample(y)
    d = Upscaler.from_pretrained(model, seed=2).sample(y)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert (a - d).abs().max() > 0.05


def test_odd_sizes_are_padded(tmp_path):
    net = dataclasses.replace(PRESETS["tiny"], ch_mult=(1, 2, 2, 2))  # HR sizes must be multiples of 8
    up = recorded(save_tiny_model(tmp_path, net=net))
    out = up.upscale(torch.rand(1, 3, 13, 11, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (1, 3, 52, 44)
    assert up.resolver.net.denoised[0] == (1, 3, 56, 48)


@pytest.mark.parametrize("solver, steps, nfe", [("euler", 3, 3), ("heun", 2, 4), ("dpmpp2m", 3, 3)])
def test_last_nfe_counts_network_evaluations(model, solver, steps, nfe):
    up = recorded(model, solver=solver, steps=steps)
    up.sample(torch.rand(1, 3, 8, 8))
    assert up.last_nfe == len(up.resolver.net.denoised) == nfe


def test_last_nfe_of_adaptive_solver(model):
    up = recorded(model, solver="dopri5", atol=0.1, rtol=0.1)
    up.sample(torch.rand(1, 3, 4, 4))
    assert up.last_nfe == len(up.resolver.net.denoised) > 0


def test_missing_built_in_model_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setattr("ecdp.modelfile.DEFAULT_MODEL", tmp_path / "not-installed")
    with pytest.raises(UserError, match="built-in default model is missing from this installation .*not-installed"):
        Upscaler.from_pretrained("default")


def test_bad_settings_are_user_errors(model):
    with pytest.raises(UserError, match="unknown solver"):
        Upscaler.from_pretrained(model, solver="rk2")
    with pytest.raises(UserError, match="too small"):
        Upscaler.from_pretrained(model, tile=4)


def test_fast_engine_matches_reference(model):
    y = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    reference = Upscaler.from_pretrained(model, engine="reference").sample(y)
    fast = Upscaler.from_pretrained(model, engine="fast", precision="fp32").sample(y)
    assert (fast - reference).abs().max().item() <= 1e-4


def test_one_upscaler_shared_by_eight_threads(model):
    """Eight threads at once get the images a single thread gets, each for its own input."""
    from concurrent.futures import ThreadPoolExecutor

    up = Upscaler.from_pretrained(model, engine="fast")
    inputs = [torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    expected = [up.sample(y) for y in inputs]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(up.sample, inputs))
    assert all(torch.equal(r, e) for r, e in zip(results, expected))


class FixedShapeResolver:
    """A stand-in for a TensorRT plan: one LR shape, mu computed inside, no sampler recorded."""

    scale, lr_multiple, tiles, sampler, engine, precision = 2, 1, False, None, "stand-in", "fp32"

    def __init__(self):
        self.runs = []

    def run(self, y, z1, mu=None, callback=None):
        self.runs.append((tuple(y.shape), tuple(z1.shape), mu))
        return torch.zeros(z1.shape), None


def test_a_fixed_shape_resolver_is_never_tiled(monkeypatch):
    """Neither a tile size nor a large image splits the input of a resolver with tiles=False; it gets
    the whole image, its noise, and no mu (it computes its own); the device defaults to the CPU."""
    monkeypatch.setattr("ecdp.upscaler.AUTO_TILE_ABOVE", 16 * 16)
    resolver = FixedShapeResolver()
    for up in (Upscaler(resolver, tile=8), Upscaler(resolver)):
        assert up.device == torch.device("cpu") and up.sampler is None
        assert up.sample(torch.rand(1, 3, 20, 24)).shape == (1, 3, 40, 48)
    assert resolver.runs == [((1, 3, 20, 24), (1, 3, 40, 48), None)] * 2
