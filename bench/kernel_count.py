"""Kernels and HBM bytes of one CUDA solve, counted without a GPU, so that a regression shows on a CPU.

    python -m bench.kernel_count [--preset paper] [--lr 64] [--batch 1]

One solve (encoder, block conditioning, every network evaluation and ODE update of Heun 3 on the
log-SNR grid, the output map) runs on meta tensors as a Speed runs it on CUDA. Each ATen operator
that does work counts as one kernel moving the bytes of its tensor inputs and outputs; the Triton
launches are recorded (``ecdp.kernels.launches``) and count one each. What the CUDA build adds
around operators, which the meta device cannot show, is added by rule:

- a convolution whose input is not channels_last: cuDNN's sm_90 kernels are NHWC-only, so its
  input and weight are transposed in and its output back out (3 kernels; the H200 profile at
  41605cb counted 1,914 transposes around 749 convolutions per solve);
- a convolution with a bias: PyTorch's cuDNN path adds it in a kernel of its own (749 in that profile);
- under autocast: every convolution and linear layer casts its weight and bias again (2 kernels).

A model, not a measurement: it counts launches and bytes moved, not their time.
"""
import argparse
import collections
import dataclasses

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
FREE = {aten.empty, aten.empty_like, aten.empty_strided, aten.detach, aten.alias, aten.lift_fresh,
        aten._local_scalar_dense, aten.promote_types}   # no kernel
CONVOLUTIONS = {aten.conv2d, aten.convolution, aten.mkldnn_convolution}
LINEAR = {aten.linear, aten.addmm, aten.mm}
SOLVER = dict(solver="heun", steps=3, grid="logsnr")


@dataclasses.dataclass
class Count:
    """Kernels by kind (ATen operator, Triton kernel or a rule's name) and HBM bytes of one solve."""

    kernels: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    bytes: int = 0

    @property
    def total(self) -> int:
        return sum(self.kernels.values())


class _Counting(TorchDispatchMode):
    """Counts the kernels and bytes of every operator, applying the rules above for `speed`; a
    convolution of a channels_last input gives a channels_last output, as cuDNN's does."""

    def __init__(self, count, autocast):
        super().__init__()
        self.count, self.autocast = count, autocast

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        if func.is_view or packet in FREE or func.namespace == "ecdp":   # ecdp's operators: their Triton launches
            return out
        tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        self.count.kernels[packet.__name__] += 1
        self.count.bytes += sum(t.numel() * t.element_size() for t in tensors)
        if packet in CONVOLUTIONS:
            x, bias = args[0], (args[2] if len(args) > 2 else (kwargs or {}).get("bias"))   # defaults may be left off
            if x.is_contiguous(memory_format=torch.channels_last):
                out = out.contiguous(memory_format=torch.channels_last)
            else:
                self.count.kernels["cuDNN NCHW<->NHWC transposes"] += 3
            if bias is not None:
                self.count.kernels["conv bias add"] += 1
        if self.autocast and packet in CONVOLUTIONS | LINEAR:
            self.count.kernels["autocast weight casts"] += 2
        return out


def count_solve(speed, preset: str = "paper", lr: int = 64, batch: int = 1) -> Count:
    """The Count of one Heun 3 solve of a random `preset` network at LR lr x lr, x4, batch `batch`,
    at `speed` (an ``ecdp.speed.Speed``; autocast is counted by its rule, the weights cast once in its place)."""
    from ecdp.kernels.launches import recording
    from ecdp.modelfile import ModelConfig
    from ecdp.nets import PRESETS, build
    from ecdp.pipeline import SuperResolver
    from ecdp.sampling import SamplerSpec

    with torch.device("meta"):
        net = build(preset).eval()
    runs = dataclasses.replace(speed, autocast=False, cuda_graphs=False, compile_mode=None)
    resolver = SuperResolver(net, ModelConfig(net=PRESETS[preset]), SamplerSpec(**SOLVER), runs)
    y = torch.empty(batch, 3, lr, lr, device="meta")
    z1 = torch.empty(resolver.noise_shape(y), device="meta")
    count = Count()
    with torch.inference_mode(), recording() as launches, _Counting(count, speed.autocast):
        resolver.run(y, z1, mu=torch.empty_like(z1))
    for launch in launches:
        count.kernels[f"triton {launch.name}"] += 1
        count.bytes += sum(t.numel() * t.element_size() for t in launch.args if isinstance(t, torch.Tensor))
    return count


def before_speed():
    """The CUDA fast engine of 41605cb as a Speed: bf16 under autocast, NCHW, the Triton GroupNorm
    and the fused ODE update, CUDA graphs."""
    from ecdp.speed import Speed
    return Speed(precision="bf16", encoder_precision="bf16", autocast=True, norm_kernel="triton", fused_ode=True,
                 cuda_graphs=True)


def main(argv=None):
    from ecdp.speed import Speed

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--lr", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    auto = Speed.auto("cuda", True)
    rows = [("41605cb's CUDA engine", before_speed()), ("Speed.auto on CUDA", auto),
            ("with the slab GroupNorm", dataclasses.replace(auto, norm_kernel="slab"))]
    counts = [count_solve(speed, args.preset, args.lr, args.batch) for _, speed in rows]
    print(f"{args.preset}, LR {args.lr} -> {4 * args.lr}, batch {args.batch}, Heun 3 (6 NFE): kernels per solve")
    for (name, speed), count in zip(rows, counts):
        print(f"- {name} ({speed.describe()}): {count.total} kernels, {count.bytes / 1e9:.2f} GB; "
              + ", ".join(f"{k} {v}" for k, v in count.kernels.most_common(8)))
    print(f"cut: {counts[0].total / counts[1].total:.2f}x fewer kernels ({counts[0].total / counts[2].total:.2f}x "
          "with the slab GroupNorm)")


if __name__ == "__main__":
    main()
