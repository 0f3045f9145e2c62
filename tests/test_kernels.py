"""Triton kernels (under the CPU interpreter) against their PyTorch references, and the dispatcher.

Runs with TRITON_INTERPRET=1 only; tests/conftest.py runs it in a subprocess of its own.
"""
import sys
import time

import pytest
import torch

KERNEL_MODULES = ("ecdp.kernels.triton_gn", "ecdp.kernels.triton_ode")


triton = pytest.importorskip("triton")
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

if not isinstance(triton.language.sum, InterpretedFunction):
    raise RuntimeError("this module runs Triton's CPU interpreter: run it with TRITON_INTERPRET=1 set "
                       "before Python starts (tests/conftest.py does so in a subprocess)")

import ecdp.kernels as kernels  # noqa: E402
from ecdp import nets  # noqa: E402
from ecdp.acceleration import fused_solve, prepare  # noqa: E402
from ecdp.kernels import layout, reference  # noqa: E402
from ecdp.parametrization import HybridDenoiser  # noqa: E402
from ecdp.sampling import SamplerSpec, solve  # noqa: E402
from ecdp.sde import time_grid  # noqa: E402
from ecdp.speed import Speed  # noqa: E402
from helpers import randomize_zero_convs  # noqa: E402
from oracle import GaussianOracle  # noqa: E402


@pytest.fixture
def triton_calls(monkeypatch):
    """Count the calls that reach the Triton launchers."""
    calls = []
    for module in kernels._triton():
        for name in ("group_norm_silu", "ode_update"):
            launcher = getattr(module, name, None)
            if launcher is not None:
                def spy(*args, _launcher=launcher, _name=name, **kwargs):
                    calls.append(_name)
                    return _launcher(*args, **kwargs)
                monkeypatch.setattr(module, name, spy)
    return calls


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed, dtype=torch.float32, scale=1.0, shift=0.0):
    return (torch.randn(*shape, generator=_gen(seed), dtype=torch.float64) * scale + shift).to(dtype)


def _assert_close(actual, expected, dtype):
    """fp32: max abs diff <= 1e-5; bf16/fp16: max abs diff <= 2e-2 of the reference's max."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert not torch.isnan(actual).any(), "output left NaN (unwritten) elements"
    diff = (actual.double() - expected.double()).abs().max().item()
    if dtype == torch.float32:
        assert diff <= 1e-5, diff
    else:
        assert diff <= 2e-2 * expected.double().abs().max().item(), diff


# ---------------------------------------------------------------------------------------------
# group_norm_silu

GN_SHAPES = [(1, 12, 5, 7, 3), (2, 24, 9, 3, 6), (3, 12, 9, 3, 4)]  # B, C, H, W, groups
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _gn_inputs(B, C, H, W, dtype, channels_last, add_channel, add, seed=0):
    layout = torch.channels_last if channels_last else torch.contiguous_format
    # A mean far from zero checks the statistics against cancellation.
    x = _randn(B, C, H, W, seed=seed, dtype=dtype, scale=2.0, shift=3.0).to(memory_format=layout)
    weight = _randn(C, seed=seed + 1, scale=0.5, shift=1.0)
    bias = _randn(C, seed=seed + 2, scale=0.5)
    inputs = dict(x=x, weight=weight, bias=bias, add_channel=None, add=None)
    if add_channel:
        inputs["add_channel"] = _randn(B, C, seed=seed + 3, dtype=dtype)
    if add is not None:
        # "other": the added tensor in the other layout than x.
        other = torch.contiguous_format if channels_last else torch.channels_last
        inputs["add"] = _randn(B, C, H, W, seed=seed + 4, dtype=dtype).to(
            memory_format=layout if add == "same" else other)
    return inputs


def _check_gn(shape, dtype, channels_last, add_channel, add, silu, **schedule):
    B, C, H, W, groups = shape
    inputs = _gn_inputs(B, C, H, W, dtype, channels_last, add_channel, add)
    x = inputs.pop("x")
    out = torch.full_like(x, float("nan"))
    got = kernels._triton()[0].group_norm_silu(x, groups=groups, silu=silu, out=out, **inputs, **schedule)
    assert got is out
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    expected = reference.group_norm_silu(x, groups=groups, silu=silu, **inputs)
    _assert_close(got, expected, dtype)


@pytest.mark.parametrize("shape", GN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("add_channel,add", [(False, None), (True, None), (False, "other"), (True, "same")],
                         ids=["plain", "add_channel", "add", "both"])
@pytest.mark.parametrize("silu", [True, False], ids=["silu", "nosilu"])
def test_group_norm_silu_fused_path(shape, dtype, channels_last, add_channel, add, silu):
    _check_gn(shape, dtype, channels_last, add_channel, add, silu)


@pytest.mark.parametrize("shape", GN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_group_norm_silu_split_path(shape, dtype, channels_last):
    """Small tiles and at most 2 spans per group: stats, Chan merges in and across programs, apply."""
    _check_gn(shape, dtype, channels_last, True, "other", True, tile=32, max_splits=2)


@pytest.mark.parametrize("groups", [1, 6])
@pytest.mark.parametrize("tile", [None, 32])
def test_group_norm_silu_one_group_or_one_channel_per_group(groups, tile):
    _check_gn((2, 6, 3, 5, groups), torch.float32, False, True, "same", True, tile=tile, max_splits=2)


def test_group_norm_silu_output_dtype_and_broadcast():
    """fp32 add_channel on a bf16 x promotes like the reference; a batch-1 add broadcasts."""
    inputs = _gn_inputs(2, 12, 5, 7, torch.bfloat16, False, True, None)
    inputs["add_channel"] = inputs["add_channel"].float()
    inputs["add"] = _randn(1, 12, 5, 7, seed=9, dtype=torch.bfloat16)
    got = kernels.group_norm_silu(groups=3, **inputs)
    expected = reference.group_norm_silu(groups=3, **inputs)
    assert got.dtype == torch.float32
    _assert_close(got, expected, torch.bfloat16)


def test_group_norm_silu_backward(triton_calls):
    """Gradients through the autograd Function equal the reference's (fp32, 1e-4)."""
    inputs = _gn_inputs(2, 12, 5, 7, torch.float32, True, True, "other")
    grad_out = _randn(2, 12, 5, 7, seed=7)
    grads = []
    for fn in (kernels.group_norm_silu, reference.group_norm_silu):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        (fn(groups=3, **leaves) * grad_out).sum().backward()
        grads.append({k: v.grad for k, v in leaves.items()})
    assert triton_calls == ["group_norm_silu"]
    for name in inputs:
        assert grads[0][name] is not None, name
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-4, rtol=1e-4)


# The NHWC slab kernels: one slab of one tile, many slabs of one tile each, few slabs of many tiles.
NHWC_SCHEDULES = {"one_slab": dict(TILE=2048, TARGET_PROGRAMS=264), "tile_slabs": dict(TILE=128, TARGET_PROGRAMS=264),
                  "long_slabs": dict(TILE=32, TARGET_PROGRAMS=3)}


@pytest.mark.parametrize("schedule", list(NHWC_SCHEDULES), ids=list(NHWC_SCHEDULES))
@pytest.mark.parametrize("shape", GN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_group_norm_silu_nhwc_kernels(schedule, shape, channels_last, monkeypatch):
    """The slab kernels (ecdp::group_norm_silu_nhwc) against the reference, the statistics merged
    across slabs and accumulated across the tiles of a slab."""
    _check_nhwc(schedule, shape, torch.float32, channels_last, True, "other", monkeypatch)


@pytest.mark.parametrize("dtype", DTYPES[1:], ids=str)
@pytest.mark.parametrize("add_channel,add", [(False, None), (False, "same"), (True, None)],
                         ids=["plain", "add", "add_channel"])
def test_group_norm_silu_nhwc_kernels_dtypes_and_adds(dtype, add_channel, add, monkeypatch):
    _check_nhwc("tile_slabs", GN_SHAPES[1], dtype, True, add_channel, add, monkeypatch)


def _check_nhwc(schedule, shape, dtype, channels_last, add_channel, add, monkeypatch):
    module = kernels._triton()[2]
    for name, value in NHWC_SCHEDULES[schedule].items():
        monkeypatch.setattr(module, name, value)
    B, C, H, W, groups = shape
    inputs = _gn_inputs(B, C, H, W, dtype, channels_last, add_channel, add)
    got = torch.ops.ecdp.group_norm_silu_nhwc(groups=groups, **inputs)
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    _assert_close(got, reference.group_norm_silu(groups=groups, **inputs), dtype)


def test_group_norm_silu_nhwc_statistics_resist_cancellation():
    """A mean 1e4 times the spread: shifted per-thread sums keep fp32 variance accurate."""
    x = _randn(2, 16, 9, 9, seed=7, shift=1e4).to(memory_format=torch.channels_last)
    weight, bias = torch.ones(16), torch.zeros(16)
    got = kernels._triton()[2].group_norm_silu(x, weight, bias, 4, silu=False)
    expected = reference.group_norm_silu(x.double(), weight.double(), bias.double(), 4, silu=False)
    assert (got.double() - expected).abs().max().item() <= 1e-2


# ---------------------------------------------------------------------------------------------
# ode_update

B_ODE = 3
T = torch.tensor([0.95, 0.5, 0.02], dtype=torch.float64)   # per-sample times
S_NEXT = torch.tensor([0.9, 0.4, 0.001], dtype=torch.float64)
T_PREV = torch.tensor([1.0, 0.55, 0.05], dtype=torch.float64)


def _ode_uses(**model):
    """(name, coef, uses base, uses acc, writes acc) for every solver's use of ode_update."""
    uses = [("euler", kernels.euler_coef(T, S_NEXT, **model), False, False, False)]
    for tableau in ("heun", "rk4"):
        stages = kernels.rk_coefs(T, S_NEXT, tableau, **model)
        for i, (_, coef) in enumerate(stages):
            last = i == len(stages) - 1
            uses.append((f"{tableau}_stage{i + 1}", coef, True, i > 0, not last))
    uses.append(("dpmpp2m_first", kernels.dpmpp2m_coef(T, S_NEXT, **model), False, False, True))
    uses.append(("dpmpp2m", kernels.dpmpp2m_coef(T, S_NEXT, T_PREV, **model), False, True, True))
    return uses


USE_NAMES = [u[0] for u in _ode_uses()]
U32 = 2.0**-24   # unit roundoff of fp32


def _assert_ode_close(got, inputs, coef64, kwargs, dtype):
    """`got` (ode_update's outputs, fp32 coefficients and arithmetic) against the update evaluated in
    float64 with float64 coefficients. Per element, each of the <= 5 terms c_i x_i carries the
    fp32 rounding of its coefficient (u |c_i x_i|), and each of the <= 5 multiply-adds (or the
    products and sums without fused multiply-adds: 2 roundings of the first, 1 of each later term)
    one rounding of a partial sum (u sum|c_i x_i|): 6 u sum|c_i x_i| to first order; 7 u allows for
    the rest. A bf16 output adds its own rounding: 2^-8 of the value to nearest (8 significant bits),
    2^-7 as Triton's interpreter converts (toward zero)."""
    exact = reference.ode_update(*(x.double() for x in inputs), coef64, write_acc=got[1] is not None,
                                 **{k: None if v is None else v.double() for k, v in kwargs.items()})
    size = reference.ode_update(*(x.double().abs() for x in inputs), coef64.abs(), write_acc=got[1] is not None,
                                **{k: None if v is None else v.double().abs() for k, v in kwargs.items()})
    for g, e, s in zip(got, exact, size):
        if e is None:
            assert g is None
            continue
        assert g.dtype == dtype and not torch.isnan(g).any()
        limit = 7 * U32 * s + (2.0**-7 * e.abs() if dtype == torch.bfloat16 else 0)
        excess = ((g.double() - e).abs() - limit).max().item()
        assert excess <= 0, excess


@pytest.mark.parametrize("use", range(len(USE_NAMES)), ids=USE_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("param", ["hybrid", "x0", "eps"])
def test_ode_update(use, dtype, param):
    _, coef, has_base, has_acc, writes_acc = _ode_uses(param=param)[use]
    coef64 = _ode_uses(param=param, dtype=torch.float64)[use][1]
    shape = (B_ODE, 3, 5, 7)
    # The network's heads are channel slices of one 6-channel tensor (strided, read in place).
    head = _randn(B_ODE, 6, 5, 7, seed=1, dtype=dtype)
    kwargs = dict(base=_randn(*shape, seed=2, dtype=dtype) if has_base else None,
                  acc=_randn(*shape, seed=3, dtype=dtype) if has_acc else None)
    z_t = _randn(*shape, seed=4, dtype=dtype).to(memory_format=torch.channels_last)
    inputs = (z_t, head[:, :3], head[:, 3:])
    out = torch.full(shape, float("nan"), dtype=dtype)
    acc_out = torch.full(shape, float("nan"), dtype=dtype) if writes_acc else None
    got = kernels._triton()[1].ode_update(*inputs, coef, out=out, acc_out=acc_out, **kwargs)
    assert got[0] is out and got[1] is acc_out
    _assert_ode_close(got, inputs, coef64, kwargs, dtype)
    expected = reference.ode_update(*inputs, coef, write_acc=writes_acc, **kwargs)
    _assert_ode_close(expected, inputs, coef64, kwargs, dtype)


def _fp32(x):
    return x.float().double()


def _fused_multiply_adds(coef, inputs, base, acc):
    """ode_update as a GPU runs the kernel: fp32 fused multiply-adds (one rounding each), emulated in
    float64, where the fp32 product of two fp32 numbers is exact."""
    z, eps, z0 = (x.double() for x in inputs)
    c = [_fp32(v).reshape(-1, 1, 1, 1) for v in coef.unbind(-1)]
    z_out = _fp32(c[2] * z0 + _fp32(c[1] * eps + _fp32(c[0] * z)))
    z_out = _fp32(c[3] * (z if base is None else base.double()) + z_out)
    acc_out = _fp32(c[7] * z0 + _fp32(c[6] * eps + _fp32(c[5] * z)))
    if acc is not None:
        z_out, acc_out = _fp32(c[4] * acc.double() + z_out), _fp32(c[8] * acc.double() + acc_out)
    return z_out.float(), acc_out.float()


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4", "dpmpp2m"])
def test_ode_bound_holds_for_fused_multiply_adds(solver):
    """The bound of _assert_ode_close (and of tests/test_cuda.py's check at HR 256) for the order in
    which a GPU contracts the kernel's arithmetic, on every row of a solve from t = 1."""
    ts = torch.linspace(1.0, 1e-3, 4, dtype=torch.float64)
    stages, _, coef = kernels.solver_table(solver, ts)
    coef64 = kernels.solver_table(solver, ts, dtype=torch.float64)[2]
    head = _randn(2, 6, 32, 32, seed=1)
    z, z_n, acc = (_randn(2, 3, 32, 32, seed=s) for s in (2, 3, 4))
    inputs = (z, head[:, :3], head[:, 3:])
    for stage, row, row64 in zip(stages, coef, coef64):
        kwargs = dict(base=z_n if stage.uses_base else None, acc=acc if stage.uses_acc else None)
        z_out, acc_out = _fused_multiply_adds(row.expand(2, -1), inputs, **kwargs)
        _assert_ode_close((z_out, acc_out if stage.writes_acc else None), inputs, row64.expand(2, -1), kwargs,
                          torch.float32)


def test_folded_coefficients_are_exact_where_the_mathematics_is():
    """Under the hybrid parametrization with c = 1 the drift does not depend on z_t: the z_t
    coefficient of every Euler and RK row is exactly 0 (the unfolded formula cancels two terms of
    size beta / 2 |z_t| in fp32), and DPM-Solver++'s data estimate takes z_t with sqrt(alpha)."""
    ts = time_grid(4, t_end=1e-3, spacing="logsnr")
    for solver in ("euler", "heun", "rk4"):
        _, _, coef = kernels.solver_table(solver, ts)
        assert (coef[:, kernels.COEF_FIELDS.index("z_z")] == 0).all(), solver
        assert (coef[:, kernels.COEF_FIELDS.index("acc_z")] == 0).all(), solver
    _, t, coef = kernels.solver_table("dpmpp2m", ts, dtype=torch.float64)
    from ecdp.sde import alpha
    torch.testing.assert_close(coef[:, kernels.COEF_FIELDS.index("acc_z")], alpha(t).sqrt(), rtol=1e-15, atol=0)
    # x0 parametrization: the data estimate is z0_hat itself
    _, _, coef = kernels.solver_table("dpmpp2m", ts, param="x0")
    assert (coef[:, kernels.COEF_FIELDS.index("acc_z0")] == 1).all()
    assert (coef[:, [kernels.COEF_FIELDS.index("acc_z"), kernels.COEF_FIELDS.index("acc_eps")]] == 0).all()


def test_ode_update_in_place():
    """out may alias the state (static buffers for CUDA graphs)."""
    coef = kernels.dpmpp2m_coef(T, S_NEXT, T_PREV)
    z, head, x0_prev = (_randn(B_ODE, 3, 4, 4, seed=s) for s in (1, 2, 3))
    head = torch.cat([head, head.flip(1)], dim=1)
    expected = reference.ode_update(z, head[:, :3], head[:, 3:], coef, acc=x0_prev, write_acc=True)
    got = kernels.ode_update(z, head[:, :3], head[:, 3:], coef, acc=x0_prev, out=z, acc_out=x0_prev)
    assert got[0] is z and got[1] is x0_prev
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-5 * e.abs().max().item(), rtol=1e-5)


class _SkewedOracle(GaussianOracle):
    """The Gaussian oracle with heads that disagree, so the hybrid mixing matters."""

    def __call__(self, z, t, cond=None):
        eps, z0 = super().__call__(z, t, cond)
        return eps + 0.1 * torch.sin(3 * z), z0 - 0.1 * torch.cos(2 * z)


@pytest.mark.parametrize("grid", ["uniform", "logsnr"])
@pytest.mark.parametrize("solver", ["euler", "heun", "rk4", "dpmpp2m"])
def test_fused_solve_matches_the_samplers(solver, grid, triton_calls):
    """The engine's fused solve (Triton ODE update over the coefficient table) against
    ecdp.sampling.solve in float64, on the skewed oracle: the same steps, to fp32 rounding."""
    steps, t_end, c = 4, 1e-3, 0.7
    denoiser = _SkewedOracle()
    z1 = _randn(2, 3, 4, 4, seed=5, dtype=torch.float64)
    expected, _ = solve(HybridDenoiser(denoiser, c=c), z1, None, SamplerSpec(solver=solver, steps=steps, t_end=t_end, grid=grid))
    ts = time_grid(steps, t_end=t_end, spacing=grid)
    stages, t, coef = kernels.solver_table(solver, ts, c=c)
    got = fused_solve(denoiser, z1.float(), None, (stages, t.float(), coef))
    assert triton_calls == ["ode_update"] * len(stages)
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tile", [None, 32], ids=["fused", "split"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_group_norm_silu_offset64_variant(tile, channels_last, monkeypatch):
    """The 64-bit offset variants (taken past int32 within a sample) compute the same values."""
    monkeypatch.setattr(layout, "INT32_MAX", 0)
    assert layout.needs_offset64(torch.zeros(1, 2, 2, 2))
    _check_gn((2, 24, 9, 3, 6), torch.bfloat16, channels_last, True, "other", True, tile=tile, max_splits=2)


def test_ode_update_offset64_variant(monkeypatch):
    monkeypatch.setattr(layout, "INT32_MAX", 0)
    coef = kernels.dpmpp2m_coef(T, S_NEXT, T_PREV)
    z, head, x0_prev = (_randn(B_ODE, 3, 4, 4, seed=s) for s in (1, 2, 3))
    head = torch.cat([head, head.flip(1)], dim=1).to(memory_format=torch.channels_last)
    expected = reference.ode_update(z, head[:, :3], head[:, 3:], coef, acc=x0_prev, write_acc=True)
    got = kernels.ode_update(z, head[:, :3], head[:, 3:], coef, acc=x0_prev, write_acc=True)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-5 * e.abs().max().item(), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# dispatcher

def _gn_call():
    inputs = _gn_inputs(1, 12, 5, 7, torch.float32, False, True, "same")
    return kernels.group_norm_silu(groups=3, **inputs), reference.group_norm_silu(groups=3, **inputs)


def _ode_call():
    z = _randn(B_ODE, 3, 4, 4, seed=1)
    return kernels.ode_update(z, z.flip(2), z.flip(3), kernels.euler_coef(T, S_NEXT))


def test_dispatch_uses_triton_by_default(triton_calls):
    got, expected = _gn_call()
    _ode_call()
    assert triton_calls == ["group_norm_silu", "ode_update"]
    _assert_close(got, expected, torch.float32)


def test_cpu_without_interpreter_routes_to_reference(triton_calls, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    got, expected = _gn_call()
    assert triton_calls == []
    assert torch.equal(got, expected)


def test_missing_triton_falls_back_to_reference(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)   # `import triton` raises ImportError
    for name in KERNEL_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
        monkeypatch.delattr(kernels, name.rsplit(".", 1)[1], raising=False)
    kernels._triton.cache_clear()
    try:
        assert not kernels.triton_available()
        got, expected = _gn_call()
        _ode_call()
        assert torch.equal(got, expected)
    finally:
        monkeypatch.undo()
        kernels._triton.cache_clear()
    assert kernels.triton_available()


# ---------------------------------------------------------------------------------------------
# the paper-preset denoiser

def _live_net(preset):
    """A seeded network whose zero-initialized conv2 are redrawn, so every GN site reaches the output."""
    torch.manual_seed(0)
    return randomize_zero_convs(nets.build(preset))


def test_paper_denoiser_parity_kernels_on_off(triton_calls):
    """The network with the Triton GroupNorm + SiLU at every norm site (Speed.norm_kernel "triton") and the
    plain one agree on the paper-preset denoiser, HR 32x32, LR 8x8, batch 1."""
    net = _live_net("paper").eval()
    fast = prepare(net, Speed(norm_kernel="triton"))
    y = torch.rand(1, 3, 8, 8, generator=_gen(1))
    z_t = _randn(1, 3, 32, 32, seed=2)
    t = torch.tensor([0.3])
    with torch.no_grad():
        cond = net.encode(y, z_t.shape[-2:])
        start = time.perf_counter()
        on = fast.denoiser(z_t, t, cond)
        elapsed = time.perf_counter() - start
        off = net.denoiser(z_t, t, cond)
    assert len(triton_calls) == 45 and set(triton_calls) == {"group_norm_silu"}, len(triton_calls)
    for a, b in zip(on, off):
        torch.testing.assert_close(a, b, atol=1e-4 * b.abs().max().item(), rtol=1e-4)
    print(f"paper denoiser at 32x32 under the interpreter: {elapsed:.1f} s")


def test_tiny_denoiser_on_the_slab_norm_matches_the_plain_one(triton_calls):
    """Speed.norm_kernel "slab": the operator at every norm site of a channels_last network gives the
    plain network's estimates (fp32, to the same tolerance as the Triton kernel above)."""
    net = _live_net("tiny").eval()
    slab = prepare(net, Speed(channels_last=True, norm_kernel="slab"))
    y = torch.rand(2, 3, 4, 4, generator=_gen(1))
    z_t = _randn(2, 3, 16, 16, seed=2)
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        on = slab.denoiser(z_t, t, slab.encode(y, z_t.shape[-2:]))
        off = net.denoiser(z_t, t, net.encode(y, z_t.shape[-2:]))
    assert triton_calls == ["group_norm_silu"] * sum(isinstance(m, nets.GroupNormSiLU) for m in net.denoiser.modules())
    for a, b in zip(on, off):
        torch.testing.assert_close(a, b, atol=1e-4 * b.abs().max().item(), rtol=1e-4)


def test_tiny_net_training_gradients_kernels_on_off(triton_calls):
    """A training step's gradients agree with kernels on (Triton forward in the autograd
    Function, at every GN site) and off."""
    net = _live_net("tiny")
    y = torch.rand(1, 3, 2, 2, generator=_gen(1))
    z_t = _randn(1, 3, 8, 8, seed=2)
    t = torch.tensor([0.3])
    grads = []
    for copy in (prepare(net, Speed(norm_kernel="triton")), net):
        eps_hat, z0_hat = copy.denoiser(z_t, t, copy.encode(y, z_t.shape[-2:]))
        (eps_hat.square().mean() + z0_hat.square().mean()).backward()
        grads.append({name: p.grad.clone() for name, p in copy.named_parameters() if p.grad is not None})
    assert triton_calls and set(triton_calls) == {"group_norm_silu"}
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[1].items():
        torch.testing.assert_close(grads[0][name], grad, atol=1e-4 * grad.abs().max().item() + 1e-7,
                                   rtol=1e-4, msg=name)
