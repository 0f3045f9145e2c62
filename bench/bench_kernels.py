"""Kernels against their references, in GB/s: GroupNorm + SiLU at the residual block's second site
(x + time projection + conditioning) and the fused ODE update. On CPU only the reference paths run
(Triton is CUDA-only here); on GPU the Triton kernels, checked against the reference, at the shapes
of bench/gpu_kernels.py. Tensors that fit in the caches can beat the copy bandwidth (of floor > 100%)."""
import pytest
import torch

import ecdp.kernels as kernels
from bench.gpu_kernels import GN_SHAPES, ODE_SIZE, eager_gn, max_error
from bench.harness import CUDA, DEVICE, ENGINE_DTYPE, dtype_name, measure, shape_text
from ecdp.kernels import reference

BATCHES = [1, 8] if CUDA else [1]
GN_CASES = GN_SHAPES if CUDA else [(32, 128, 128), (64, 64, 64), (64, 32, 32)]   # (C, H, W); CPU: tiny, HR 128
ODE_CASE_SIZE = ODE_SIZE if CUDA else 128
GN_IMPLS = ["reference", "eager"] + (["triton"] if CUDA and kernels.triton_available() else [])
ODE_IMPLS = ["reference"] + (["fused"] if CUDA and kernels.triton_available() else [])
ODE_USES = ["euler", "rk4_stage2", "dpmpp2m"]
ITERATIONS = 20 if CUDA else 5
ROUNDS = 10


def random(*shape, generator):
    return torch.randn(*shape, generator=generator).to(DEVICE, ENGINE_DTYPE)


@pytest.mark.parametrize("impl", GN_IMPLS)
@pytest.mark.parametrize("chw", GN_CASES, ids=lambda chw: "x".join(map(str, chw)))
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")
def test_group_norm_silu(benchmark, batch, chw, impl):
    generator = torch.Generator().manual_seed(0)
    x, add = random(batch, *chw, generator=generator), random(batch, *chw, generator=generator)
    add_channel = random(batch, chw[0], generator=generator)
    weight = (1 + 0.1 * torch.randn(chw[0], generator=generator)).to(DEVICE)
    bias = (0.1 * torch.randn(chw[0], generator=generator)).to(DEVICE)
    groups = min(chw[0] // 4, 32)
    calls = {
        "reference": lambda: reference.group_norm_silu(x, weight, bias, groups, add_channel=add_channel, add=add),
        "eager": lambda: eager_gn(x, weight.to(x.dtype), bias.to(x.dtype), groups, add_channel, add),
        "triton": lambda: kernels.group_norm_silu(x, weight, bias, groups, add_channel=add_channel, add=add),
    }
    info = parity(calls[impl], calls["reference"]) if impl == "triton" else {}
    nbytes = (2 * x.numel() + add.numel() + add_channel.numel()) * x.element_size()
    measure(benchmark, calls[impl], rounds=ROUNDS, iterations=ITERATIONS, batch=batch, bytes=nbytes,
            path=impl, dtype=dtype_name(x.dtype), shape=shape_text(x.shape), **info)


@pytest.mark.parametrize("impl", ODE_IMPLS)
@pytest.mark.parametrize("use", ODE_USES)
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")
def test_ode_update(benchmark, batch, use, impl):
    generator = torch.Generator().manual_seed(0)
    shape = (batch, 3, ODE_CASE_SIZE, ODE_CASE_SIZE)
    head = random(batch, 6, ODE_CASE_SIZE, ODE_CASE_SIZE, generator=generator)
    eps_hat, z0_hat = head[:, :3], head[:, 3:]
    z, base, acc = (random(*shape, generator=generator) for _ in range(3))
    coef, options = ode_use(use, batch, base, acc)
    calls = {
        "reference": lambda: reference.ode_update(z, eps_hat, z0_hat, coef, **options),
        "fused": lambda: kernels.ode_update(z, eps_hat, z0_hat, coef, **options),
    }
    info = parity(calls[impl], calls["reference"]) if impl == "fused" else {}
    streams = 3 + ("base" in options) + ("acc" in options) + 1 + options.get("write_acc", False)
    measure(benchmark, calls[impl], rounds=ROUNDS, iterations=ITERATIONS, batch=batch,
            bytes=streams * z.numel() * z.element_size(), path=f"{impl} {use}", dtype=dtype_name(z.dtype),
            shape=shape_text(shape), **info)


def ode_use(use, batch, base, acc):
    """(coef, options) of one solver use, as bench/gpu_kernels.py times them."""
    t = torch.linspace(0.9, 0.5, batch, dtype=torch.float64)
    s = t - 0.05
    uses = {
        "euler": (kernels.euler_coef(t, s), {}),
        "rk4_stage2": (kernels.rk_coefs(t, s, "rk4")[1][1], dict(base=base, acc=acc, write_acc=True)),
        "dpmpp2m": (kernels.dpmpp2m_coef(t, s, t + 0.05), dict(acc=acc, write_acc=True)),
    }
    coef, options = uses[use]
    return coef.to(DEVICE), options


def parity(call, reference_call):
    """The error of a kernel against its reference (bench/gpu_kernels.py's measure); fails if too large."""
    got, expected = call(), reference_call()
    pairs = zip(got, expected) if isinstance(got, tuple) else [(got, expected)]
    errors = [max_error(g, e, dtype_name(ENGINE_DTYPE), relative=True) for g, e in pairs if e is not None]
    assert all(passed for _, passed in errors), f"kernel differs from its reference: {errors}"
    return dict(error=max(error for error, _ in errors))
