"""The fast engine's captured region makes no host synchronization and no host-to-device copy.

The function a SuperResolver hands to its GraphedSolve (``resolver.graphs.fn``: encoder, block
conditioning, every stage of every fixed-step solver, the output map) runs here on meta tensors
under a dispatch mode that fails on what a capture cannot hold: a read of a device value on the
host (.item(), nonzero and other data-dependent shapes) and any tensor on the CPU (host data,
which only a host-to-device copy could bring in). With Triton installed the kernels' launchers
run too (their launches recorded, not run), so their code is inside the region. mu(y) (the
bicubic upscale, whose matrices come from the host) is computed by ``run`` before the replay.
"""
import contextlib
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import ecdp.kernels as kernels
from ecdp.modelfile import ModelConfig
from ecdp.nets import build
from ecdp.pipeline import SuperResolver
from ecdp.sampling import SamplerSpec
from ecdp.speed import Speed

aten = torch.ops.aten
HOST_METHODS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__bool__,
                torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__}
FROM_HOST_DATA = {torch.tensor, torch.as_tensor, torch.asarray, torch.from_numpy, torch.frombuffer}
HOST_READS = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten.unique_consecutive,
              aten._unique2, aten.unique_dim, aten.repeat_interleave, aten.bincount, aten.equal,
              aten.allclose, aten.is_nonzero}
FIXED_STEP = [("euler", 2), ("heun", 2), ("rk4", 1), ("dpmpp2m", 3)]


class CaptureUnsafe(AssertionError):
    """An operation that a CUDA graph capture cannot hold."""


class HostDataGuard(TorchFunctionMode):
    """Fails on host reads of tensor values and on tensors built from host data (Python numbers,
    lists, arrays: a host-to-device copy on a device), seen at the level of torch's functions."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HOST_METHODS:
            raise CaptureUnsafe(f"{func.__name__} reads a device value on the host (a synchronization)")
        if func in FROM_HOST_DATA and not (args and isinstance(args[0], torch.Tensor)):
            raise CaptureUnsafe(f"torch.{func.__name__} of host data: a host-to-device copy inside the region")
        return func(*args, **kwargs)


class DeviceGuard(TorchDispatchMode):
    """Fails on data-dependent operations and on any tensor outside `device`, at the operator level."""

    def __init__(self, device="meta"):
        super().__init__()
        self.device = torch.device(device)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in HOST_READS:
            raise CaptureUnsafe(f"{func} reads a device value on the host (a synchronization)")
        self._check(func, "reads", tree_leaves((args, kwargs)))
        out = func(*args, **kwargs)
        self._check(func, "makes", tree_leaves(out))
        return out

    def _check(self, func, verb, leaves):
        for t in leaves:
            if isinstance(t, torch.Tensor) and t.device != self.device:
                raise CaptureUnsafe(f"{func} {verb} a tensor on {t.device}: a host-to-device copy "
                                    f"(or host work) inside the captured region")


@contextlib.contextmanager
def capture_guard():
    with HostDataGuard(), DeviceGuard():
        yield


def _launchers():
    """Record the Triton launches (their launcher code runs) when Triton imports."""
    if kernels.triton_available():
        from ecdp.kernels.launches import recording
        return recording()
    return contextlib.nullcontext()


@pytest.fixture(scope="module")
def meta_net():
    with torch.device("meta"):
        return build("tiny").eval()


def _region(net, solver, steps, *, grid="logsnr", fused_ode=True, channels_last=False):
    """Run what a fresh graphed resolver hands to its capture (its coefficient table built inside)."""
    speed = Speed(channels_last=channels_last, norm_kernel="triton", fused_ode=fused_ode, cuda_graphs=True)
    resolver = SuperResolver(net, ModelConfig(sigma=0.2), SamplerSpec(solver=solver, steps=steps, grid=grid), speed)
    y = torch.empty(2, 3, 8, 8, device="meta")
    z1 = torch.empty(resolver.noise_shape(y), device="meta")
    with torch.inference_mode(), _launchers(), capture_guard():
        x = resolver.graphs.fn(y, z1, torch.empty_like(z1))
    assert x.shape == z1.shape


@pytest.mark.parametrize("grid", ["uniform", "logsnr"])
@pytest.mark.parametrize("fused_ode", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("solver,steps", FIXED_STEP, ids=[s for s, _ in FIXED_STEP])
def test_captured_region_is_capture_safe(meta_net, solver, steps, fused_ode, grid):
    _region(meta_net, solver, steps, grid=grid, fused_ode=fused_ode)


def test_captured_region_is_capture_safe_in_channels_last(meta_net):
    _region(meta_net, "heun", 2, channels_last=True)


def test_the_cuda_engine_hands_its_whole_solve_to_the_capture_and_mu_stays_outside(meta_net, monkeypatch):
    """Speed.auto on CUDA captures fixed-step solves; run computes mu (host-built matrices) before
    the replay, so the captured function gets it as an input."""
    import ecdp.pipeline as pipeline
    handed = []
    monkeypatch.setattr(pipeline, "GraphedSolve", lambda fn: handed.append(fn) or fn)
    speed = Speed.auto("cuda", fixed_step=True)
    assert speed.cuda_graphs and speed.channels_last
    resolver = SuperResolver(meta_net, ModelConfig(sigma=0.2), SamplerSpec(solver="heun", steps=2), speed)
    y = torch.empty(1, 3, 8, 8, device="meta")
    z1 = torch.empty(resolver.noise_shape(y), device="meta")
    with torch.inference_mode(), _launchers(), capture_guard():
        handed[0](y, z1, torch.empty_like(z1))
    with pytest.raises(CaptureUnsafe, match="host"), torch.inference_mode(), capture_guard():
        resolver.upscale(y)   # why mu is not computed inside the region

@pytest.mark.parametrize("fault", ["host_copy", "item", "nonzero"])
def test_guard_fails_on_a_planted_fault(meta_net, monkeypatch, fault):
    """A host copy (the kind ode_coef once made), a .item() and a data-dependent shape are caught."""
    import ecdp.pipeline as pipeline
    solve = pipeline.fused_solve

    def faulty(denoiser, z1, cond, table, callback=None):
        if fault == "host_copy":
            z1 = z1 * torch.as_tensor(1.0, device=z1.device)   # a CPU scalar copied to the device
        elif fault == "item":
            z1 = z1 * table[1][0].item()
        else:
            z1 = z1 + (table[1] > 0.5).nonzero().shape[0]
        return solve(denoiser, z1, cond, table, callback)

    monkeypatch.setattr(pipeline, "fused_solve", faulty)
    with pytest.raises(CaptureUnsafe):
        _region(meta_net, "euler", 1)


def test_guard_fails_on_the_old_coefficient_host_copy(meta_net, monkeypatch):
    """ode_coef building its constant columns with torch.as_tensor(number, device=...), as it once
    did, is caught."""
    coef_module = sys.modules["ecdp.kernels.ode_coef"]
    ode_coef = coef_module.ode_coef

    def host_copying(t, **columns):
        t = torch.as_tensor(t)
        for name, v in columns.items():
            if name in coef_module.COEF_FIELDS and not isinstance(v, torch.Tensor):
                columns[name] = torch.as_tensor(v, dtype=torch.float64, device=t.device)
        return ode_coef(t, **columns)

    monkeypatch.setattr(coef_module, "ode_coef", host_copying)
    with pytest.raises(CaptureUnsafe, match="host-to-device"):
        _region(meta_net, "heun", 1)
