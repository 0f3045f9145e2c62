"""The work of one network evaluation, counted on the meta device, and the roofline figures.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix
products, a multiply-add is 2 FLOPs; normalization and elementwise work is not counted). Bytes are
the unfused eager traffic: every aten op reads its tensor inputs and writes its outputs once
(views move nothing), weights included. A benchmark's fraction of the floor is its compute floor
(FLOPs over the matrix-product ceiling measured in the same run) over its median time; the
fraction of bandwidth is its bytes over its time, over the copy bandwidth of the same run.
"""
import functools
from dataclasses import dataclass

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from ecdp.nets import build


@dataclass(frozen=True)
class Work:
    """Per image: the encoder, the per-block conditioning (once per solve), and one network
    evaluation with the conditioning recomputed (as a training step does) or precomputed (a solve)."""

    encoder_flops: int
    conditioning_flops: int
    nfe_flops: int
    nfe_bytes: int
    cached_nfe_flops: int
    cached_nfe_bytes: int

    def sample_flops(self, nfe, batch):
        """FLOPs of a solve with `nfe` evaluations: the work the method needs (the cached network),
        the same for every path, so TFLOP/s and the fraction of the floor compare like speed."""
        return batch * (self.encoder_flops + self.conditioning_flops + nfe * self.cached_nfe_flops)

    def training_flops(self, batch, nfe=0):
        """One score-matching step (the backward about twice the forward), plus, with nfe > 0, the
        quality loss through a solve of nfe evaluations by the adjoint (which recomputes each one)."""
        return batch * (3 * (self.encoder_flops + self.nfe_flops) + 4 * nfe * self.nfe_flops)


class ByteCounter(TorchDispatchMode):
    """Bytes read and written by the aten ops run under it, each op once (views excluded)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            leaves = pytree.tree_leaves((args, kwargs, out))
            self.total += sum(_nbytes(t) for t in leaves if isinstance(t, torch.Tensor))
        return out


def _nbytes(t):
    return min(t.numel() * t.element_size(), t.untyped_storage().nbytes())


def _count(fn, *args):
    """(flops, bytes, result) of fn(*args)."""
    with FlopCounterMode(display=False) as flops, ByteCounter() as nbytes:
        result = fn(*args)
    return flops.get_total_flops(), nbytes.total, result


@functools.cache
def work(net_config, lr, scale, dtype=torch.float32):
    """The Work of a network (a NetConfig) at LR size lr x lr, batch 1, weights and data in `dtype`."""
    with torch.device("meta"), torch.no_grad():
        net = build(net_config).to(dtype)
        y = torch.rand(1, 3, lr, lr, dtype=dtype)
        z = torch.randn(1, 3, lr * scale, lr * scale, dtype=dtype)
        t = torch.full((1,), 0.5)
        encoder_flops, _, features = _count(net.encoder, y)
        conditioning_flops, _, cond = _count(net.denoiser.block_conditioning, features, z.shape[-2:])
        recomputed = lambda z, t: net.denoiser(z, t, net.denoiser.block_conditioning(features, z.shape[-2:]))
        nfe_flops, nfe_bytes, _ = _count(recomputed, z, t)
        cached_flops, cached_bytes, _ = _count(net.denoiser, z, t, cond)
    return Work(encoder_flops, conditioning_flops, nfe_flops, nfe_bytes, cached_flops, cached_bytes)


def ceilings(benchmarks):
    """{"compute <precision>": FLOP/s, "copy": bytes/s} from the ceiling benchmarks of a
    pytest-benchmark JSON: per precision, the fastest of the compute ceilings measured in it (a
    large matrix product, a large 3x3 convolution)."""
    found = {}
    for bench in benchmarks:
        info = bench["extra_info"]
        name, seconds = info.get("ceiling"), bench["stats"]["median"]
        if name == "copy":
            found["copy"] = info["bytes"] / seconds
        elif name:
            found[name] = max(found.get(name, 0), info["flops"] / seconds)
    return found


def add_floor_fractions(benchmarks):
    """Add of_compute_floor and of_bandwidth to the extra_info of every benchmark that has the work."""
    ceiling = ceilings(benchmarks)
    for bench in benchmarks:
        info, seconds = bench["extra_info"], bench["stats"]["median"]
        compute = ceiling.get(f"compute {info.get('precision', info.get('dtype'))}")
        if info.get("flops") and compute and not info.get("ceiling"):
            info["compute_floor_ms"] = 1e3 * info["flops"] / compute
            info["of_compute_floor"] = info["flops"] / compute / seconds
        if info.get("bytes") and "copy" in ceiling:
            info["bandwidth_floor_ms"] = 1e3 * info["bytes"] / ceiling["copy"]
            info["of_bandwidth"] = info["bytes"] / ceiling["copy"] / seconds
