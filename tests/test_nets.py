import pytest
import torch
import torch.nn.functional as F

import ecdp.nets as nets
from ecdp.nets import PRESETS, NetConfig, build, count_parameters
from helpers import randomize_zero_convs


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    net = build("tiny").eval()
    randomize_zero_convs(net, bias=True)
    return net


def inputs(scale, batch=2, size=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(batch, 3, size // scale, size // scale, generator=g)
    z_t = torch.randn(batch, 3, size, size, generator=g)
    t = torch.rand(batch, generator=g)
    return y, z_t, t


def test_paper_parameter_counts():
    with torch.device("meta"):
        net = build("paper")
    assert count_parameters(net.denoiser) == 26_039_302
    assert count_parameters(net.encoder) == 16_548_544
    assert count_parameters(net) == 42_587_846


def test_tiny_is_small():
    with torch.device("meta"):
        assert count_parameters(build("tiny")) <= 3_000_000


def test_build_accepts_config():
    cfg = NetConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, emb_dim=64, time_freqs=32,
                    enc_nf=16, enc_gc=8, enc_blocks=2, enc_taps=(1, 2))
    net = build(cfg)
    assert net.config == cfg
    y, z_t, t = inputs(scale=4, batch=1, size=32)
    with torch.no_grad():
        eps_hat, _ = net(z_t, t, net.encode(y, z_t.shape[-2:]))
    assert eps_hat.shape == z_t.shape


def test_unknown_preset():
    with pytest.raises(ValueError, match="tiny"):
        build("huge")
    assert set(PRESETS) == {"paper", "small", "tiny"}


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_tiny_shapes(tiny, scale):
    y, z_t, t = inputs(scale)
    with torch.no_grad():
        features = tiny.encoder(y)
        cond = tiny.encode(y, z_t.shape[-2:])
        eps_hat, z0_hat = tiny(z_t, t, cond)
    assert features.shape == (2, tiny.config.cond_channels, 64 // scale, 64 // scale)
    blocks = list(tiny.denoiser.blocks_with_sizes((64, 64)))
    assert [c.shape for c in cond] == [(2, blk.conv1.out_channels, *size) for blk, size in blocks]
    assert eps_hat.shape == z0_hat.shape == (2, 3, 64, 64)
    assert torch.isfinite(eps_hat).all() and torch.isfinite(z0_hat).all()
    assert not torch.allclose(eps_hat, z0_hat)


def test_size_not_multiple_rejected(tiny):
    y, _, t = inputs(scale=4)
    with pytest.raises(ValueError, match="multiple of 4"):
        tiny(torch.randn(2, 3, 62, 62), t, tiny.encode(y, (62, 62)))


def test_time_and_conditioning_change_output(tiny):
    y, z_t, t = inputs(scale=4)
    with torch.no_grad():
        cond = tiny.encode(y, z_t.shape[-2:])
        base = torch.cat(tiny(z_t, t, cond), dim=1)
        other_time = torch.cat(tiny(z_t, 1 - t, cond), dim=1)
        other_cond = torch.cat(tiny(z_t, t, tiny.encode(y.flip(-1), z_t.shape[-2:])), dim=1)
    assert (base - other_time).abs().max() > 1e-3
    assert (base - other_cond).abs().max() > 1e-3


def test_conv2_starts_at_zero():
    torch.manual_seed(0)
    blocks = [m for m in build("tiny").modules() if isinstance(m, nets.ResBlock)]
    assert blocks and all(not b.conv2.weight.any() and not b.conv2.bias.any() for b in blocks)


def _resize_then_project(block, features, size):
    """The paper's order: the encoder features resized to the block's resolution, then projected."""
    return block.cond_proj(F.interpolate(features, size=size, mode="bilinear", align_corners=False))


def test_cond_resize_and_projection_commute(tiny):
    block = tiny.denoiser.down[0][0]
    features = torch.randn(2, tiny.config.cond_channels, 16, 16)
    with torch.no_grad():
        expected = _resize_then_project(block, features, (64, 64))
        projected_first = block.cond(features, (64, 64))
    torch.testing.assert_close(projected_first, expected, atol=1e-5, rtol=1e-5)


def test_conditioning_at_lr_equals_the_papers_order_in_the_denoiser(tiny):
    """The one conditioning (projected at LR, resized once per image) gives the denoiser's output of
    the paper's order (resize, then project) in fp32."""
    randomize_zero_convs(tiny)
    y, z_t, t = inputs(scale=4, batch=2)
    with torch.no_grad():
        features = tiny.encoder(y)
        papers = tuple(_resize_then_project(blk, features, size)
                       for blk, size in tiny.denoiser.blocks_with_sizes(z_t.shape[-2:]))
        reference = tiny(z_t, t, papers)
        cached = tiny(z_t, t, tiny.encode(y, z_t.shape[-2:]))
    for a, b in zip(reference, cached):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
