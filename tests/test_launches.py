"""The kernels' launches recorded over meta tensors (no GPU): variants, 64-bit offsets, checks."""
import pytest
import torch

pytest.importorskip("triton")

import ecdp.kernels as kernels  # noqa: E402
from ecdp.kernels import aot_check  # noqa: E402
from ecdp.kernels.launches import Launch, recording  # noqa: E402


def _meta(*shape, channels_last=False, dtype=torch.bfloat16):
    t = torch.empty(*shape, device="meta", dtype=dtype)
    return t.to(memory_format=torch.channels_last) if channels_last else t


def _gn_launches(x):
    C = x.shape[1]
    weight, bias = torch.empty(C, device="meta"), torch.empty(C, device="meta")
    with recording() as launches:
        out = kernels.group_norm_silu(x, weight, bias, 32, add_channel=_meta(x.shape[0], C), add=x)
    assert out.shape == x.shape and out.is_meta
    return launches


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_group_norm_past_int32_takes_the_64_bit_variant(channels_last):
    """The paper preset's widest site (192 channels at full HR size) at LR 837 px: past 2^31 elements."""
    big = _gn_launches(_meta(1, 192, 3348, 3348, channels_last=channels_last))
    small = _gn_launches(_meta(8, 192, 256, 256, channels_last=channels_last))
    image_kernels = {"_gn_fused", "_gn_stats", "_gn_apply"}
    assert all(launch.options["OFFSET64"] for launch in big if launch.name in image_kernels)
    assert not any(launch.options.get("OFFSET64") for launch in small)
    assert all(launch.problems() == [] for launch in big + small)


def test_ode_update_past_int32_takes_the_64_bit_variant():
    z = _meta(1, 3, 27000, 27000, dtype=torch.float32)
    coef = torch.empty(1, len(kernels.COEF_FIELDS), device="meta")
    with recording() as launches:
        kernels.ode_update(z, z, z, coef, base=z, acc=z, write_acc=True)
        kernels.ode_update(z[:, :, :100], z[:, :, :100], z[:, :, :100], coef)
    assert [launch.options["OFFSET64"] for launch in launches] == [True, False]
    assert all(launch.problems() == [] for launch in launches)


def test_launch_problems_name_offsets_and_grids():
    x = _meta(1, 192, 3348, 3348)
    assert "overflows int32" in Launch(None, (1,), (x,), dict(OFFSET64=False)).problems()[0]
    assert Launch(None, (1,), (x,), dict(OFFSET64=True)).problems() == []
    assert "grid axis 1" in Launch(None, (1, 70000), (), {}).problems()[0]


def test_recording_restores_the_kernels():
    gn = kernels._triton()[0]
    before = gn._gn_fused
    with recording():
        assert gn._gn_fused is not before
    assert gn._gn_fused is before and not kernels._use_triton(torch.empty(1, device="meta"))


def test_aot_cases_record_every_stage_of_a_solve():
    """One case of the compile check: GN at every site of every NFE, one ODE update per NFE."""
    case = aot_check.Case("tiny", 8, 1, "bf16", True, "dpmpp2m", 3)
    launches = aot_check.record(case)
    names = [launch.name for launch in launches]
    assert names.count("_ode_update") == 3
    ode = [launch for launch in launches if launch.name == "_ode_update"]
    assert [launch.options["HAS_ACC"] for launch in ode] == [False, True, False]
    assert all(launch.options["WRITE_ACC"] for launch in ode)
    gn_calls = names.count("_gn_fused") + names.count("_gn_finalize")   # one of them per GroupNorm call
    assert gn_calls == 3 * (2 * _res_blocks("tiny") + 1)   # two per residual block, one in the head


def _res_blocks(preset):
    from ecdp.nets import ResBlock, build
    with torch.device("meta"):
        return sum(isinstance(m, ResBlock) for m in build(preset).modules())


def test_ptxas_figures_and_findings():
    log = ("ptxas info    : Function properties for _gn_apply\n"
           "    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers\n")
    figures = aot_check.ptxas_figures(log)
    assert figures == dict(registers=255, stack=8, spill_stores=4, spill_loads=4)
    variant = dict(arch=90, shared=300000, **figures)
    found = aot_check.findings(variant)
    assert any("spills" in f for f in found) and any("shared memory" in f for f in found)
    clean = dict(arch=80, shared=1024, registers=40, stack=0, spill_stores=0, spill_loads=0)
    assert aot_check.findings(clean) == []


def test_meta_convolutions_take_the_layout_cudnn_gives():
    """Inside recording(), a meta convolution of a channels_last input or weight is channels_last
    (PyTorch's meta kernel alone returns NCHW), and an NCHW one stays NCHW."""
    x, w = _meta(2, 8, 6, 6, dtype=torch.float32), _meta(4, 8, 3, 3, dtype=torch.float32)
    conv, nhwc = torch.nn.functional.conv2d, torch.channels_last
    with recording():
        assert conv(x.to(memory_format=nhwc), w).is_contiguous(memory_format=nhwc)
        assert conv(x, w.to(memory_format=nhwc)).is_contiguous(memory_format=nhwc)
        assert conv(x, w).is_contiguous()
    assert conv(x.to(memory_format=nhwc), w).is_contiguous()


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_aot_cases_in_channels_last_record_the_nhwc_group_norm(channels_last):
    launches = aot_check.record(aot_check.Case("tiny", 8, 1, "bf16", channels_last, "euler", 1))
    group_norm = [launch for launch in launches if launch.name in ("_gn_fused", "_gn_stats", "_gn_apply")]
    assert group_norm and all(launch.channels_inner == channels_last for launch in group_norm)
