"""The fast engine on the CPU (Speed.auto on the CPU, ecdp.acceleration.prepare) against the reference engine.

The built-in model on a photo (scikit-image's astronaut): in fp32 the CPU engine computes what the
reference computes up to float rounding, for every fixed-step solver on both time grids. In bf16
(the default on CPUs with bf16 arithmetic) the largest difference measured at 32x24 LR is 0.4/255
(euler) to 1.2/255 (heun, 2 steps), bound BF16_TOL; with the model's own sampler (heun 3 steps,
log-SNR grid) it is 0.59/255 at 64x48 and 0.66/255 at 128x128 (bench/bench_cpu_engine.py), bound
1/255. The bf16 tests need oneDNN's bf16 convolutions (AVX-512, native or emulated).
"""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ecdp.choices import EVALS_PER_STEP, GRIDS
from ecdp.acceleration import OneDNNConv1x1, prepare
from ecdp.modelfile import load_model, resolve_model
from ecdp.speed import Speed, bf16_supported
from ecdp.upscaler import Upscaler

STEPS = {"euler": 3, "heun": 2, "rk4": 1, "dpmpp2m": 3}
FP32_TOL = 1e-4
BF16_TOL = 2 / 255
needs_bf16 = pytest.mark.skipif(not bf16_supported(), reason="oneDNN has no bf16 convolutions on this CPU")


@pytest.fixture(scope="module")
def default_model():
    return load_model(resolve_model("default"))


def astronaut(width, height):
    """The astronaut photo resized to width x height, as a (1, 3, height, width) tensor in [0, 1]."""
    skimage_data = pytest.importorskip("skimage.data")
    image = Image.fromarray(skimage_data.astronaut()).resize((width, height), Image.BICUBIC)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module")
def photo():
    return astronaut(32, 24)


def upscaler(default_model, **options):
    net, config = default_model
    return Upscaler.from_model(net, config, **options)


@needs_bf16
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("solver", list(EVALS_PER_STEP))
def test_cpu_engine_matches_the_reference(default_model, photo, solver, grid):
    sampler = dict(solver=solver, steps=STEPS[solver], grid=grid, seed=4)
    reference = upscaler(default_model, engine="reference", **sampler).sample(photo)
    fp32 = upscaler(default_model, precision="fp32", **sampler).sample(photo)
    bf16 = upscaler(default_model, precision="bf16", **sampler).sample(photo)
    assert (fp32 - reference).abs().max().item() <= FP32_TOL
    assert (bf16 - reference).abs().max().item() <= BF16_TOL
    assert (bf16 - reference).abs().max().item() > 0   # bf16 really ran


@needs_bf16
def test_bf16_with_the_models_sampler_stays_within_one_level(default_model):
    photo = astronaut(64, 48)
    reference = upscaler(default_model, engine="reference").sample(photo)
    bf16 = upscaler(default_model, precision="bf16").sample(photo)
    assert (bf16 - reference).abs().max().item() <= 1 / 255


@pytest.mark.parametrize("native", [True, False])
def test_default_precision_follows_the_hardware(default_model, monkeypatch, native):
    import ecdp.speed
    monkeypatch.setattr(ecdp.speed, "native_bf16", lambda: native)
    assert upscaler(default_model, steps=1).precision == ("bf16" if native else "fp32")
    assert upscaler(default_model, solver="dopri5").precision == "fp32"   # adaptive: fp32 on the CPU
    assert upscaler(default_model, precision="fp32").precision == "fp32"
    assert upscaler(default_model, engine="reference").precision == "fp32"


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=needs_bf16)])
def test_same_seed_same_image(default_model, photo, precision):
    first, again, other = (upscaler(default_model, precision=precision, steps=1, seed=seed).sample(photo)
                           for seed in (7, 7, 8))
    assert torch.equal(first, again)
    assert (first - other).abs().max().item() > 0.01


def test_cpu_network_is_a_copy_with_the_same_weights(default_model):
    net, _ = default_model
    copy = prepare(net, Speed(precision="bf16", channels_last=True, onednn_1x1=True))
    assert copy is not net and next(net.denoiser.parameters()).dtype == torch.float32
    assert next(copy.denoiser.parameters()).dtype == torch.bfloat16
    assert next(copy.encoder.parameters()).dtype == torch.float32
    assert copy.state_dict().keys() == net.state_dict().keys()
    pointwise = [m for m in copy.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert pointwise and all(type(m) is OneDNNConv1x1 for m in pointwise)
    assert all(type(m) is nn.Conv2d for m in net.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=needs_bf16)])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("threads", [1, 2])
def test_onednn_1x1_convolution_equals_the_plain_one(threads, layout, dtype):
    """One thread is where PyTorch would take its slow fallback; the values are the same."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        conv = nn.Conv2d(24, 16, 1).to(dtype)
        onednn = nn.Conv2d(24, 16, 1).to(dtype)
        onednn.load_state_dict(conv.state_dict())
        onednn.__class__ = OneDNNConv1x1
        x = torch.randn(3, 24, 12, 20).to(dtype).contiguous(memory_format=layout)
        with torch.inference_mode():
            torch.testing.assert_close(onednn(x).float(), conv(x).float(), rtol=1e-2 if dtype != torch.float32 else 1e-5,
                                       atol=1e-5)
    finally:
        torch.set_num_threads(previous)


def test_precision_is_checked(default_model):
    from ecdp.errors import UserError
    with pytest.raises(UserError, match="unknown precision 'fp8'"):
        upscaler(default_model, precision="fp8")
    with pytest.raises(UserError, match="precision bf16 needs the fast engine"):
        upscaler(default_model, engine="reference", precision="bf16")


def test_bf16_where_onednn_cannot_is_one_clear_error(default_model, monkeypatch):
    import ecdp.speed
    from ecdp.errors import UserError
    monkeypatch.setattr(ecdp.speed, "bf16_supported", lambda: False)
    with pytest.raises(UserError, match="precision bf16 needs a CPU with AVX-512"):
        upscaler(default_model, precision="bf16")
    assert upscaler(default_model).precision == "fp32"


@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_group_norm_in_bf16_equals_the_fp32_round_trip(channels_last):
    """The reference GroupNorm + SiLU feeds bf16 to F.group_norm on the CPU; its values are those of
    computing in fp32 and rounding once, as on every other device, up to one bf16 rounding."""
    from ecdp.kernels import reference
    generator = torch.Generator().manual_seed(0)
    x, add = (torch.randn(2, 32, 12, 20, generator=generator).bfloat16() for _ in range(2))
    if channels_last:
        x, add = (t.contiguous(memory_format=torch.channels_last) for t in (x, add))
    add_channel = torch.randn(2, 32, generator=generator).bfloat16()
    weight, bias = (torch.randn(32, generator=generator).bfloat16() for _ in range(2))
    got = reference.group_norm_silu(x, weight, bias, 8, add_channel=add_channel, add=add)
    summed = x + add_channel[:, :, None, None] + add
    expected = torch.nn.functional.group_norm(summed.float(), 8, weight.float(), bias.float()).bfloat16()
    expected = torch.nn.functional.silu(expected)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), rtol=2**-8, atol=2**-16)
    assert (got != expected).float().mean() < 0.01


def test_in_place_adds_keep_type_promotion_and_broadcasting():
    """The reference's second add runs in place only where that gives what x + add gives."""
    from ecdp.kernels import reference
    weight, bias = torch.ones(8), torch.zeros(8)
    x, add_channel = torch.randn(1, 8, 4, 4).bfloat16(), torch.randn(1, 8).bfloat16()
    promoted = reference.group_norm_silu(x, weight, bias, 2, add_channel=add_channel, add=torch.randn(1, 8, 4, 4))
    assert promoted.dtype == torch.float32
    wider = reference.group_norm_silu(x.float(), weight, bias, 2, add_channel=add_channel.float(),
                                      add=torch.randn(3, 8, 4, 4))
    assert wider.shape == (3, 8, 4, 4)
