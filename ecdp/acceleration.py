"""How a Speed (ecdp.speed) is carried out, behind the denoiser contract.

- ``prepare``: the network as a Speed runs it: a copy whose weights are cast once (or that runs
  under autocast, for the exporters), in channels_last, with 1x1 convolutions kept on oneDNN, the
  residual blocks' biases folded, a GroupNorm + SiLU kernel at the norm sites, and ``torch.compile``; casts
  at its boundary keep the inputs, the ODE state and the outputs the caller's fp32.
- ``fused_solve``: the fixed-step solve driven by the fused ODE update (``ecdp.kernels.ode_update``)
  over a coefficient table precomputed on the device (``ecdp.kernels.ode_coef.solver_table``).
- ``backends``: the process-wide backend settings a Speed asks for, while a solve runs.
- ``GraphedSolve``: on CUDA, a fixed-shape function of tensors captured once per input shape in a
  CUDA graph and replayed on a private stream; one capture at a time per process; safe to call
  from several threads; a small LRU of graphs.
"""
import collections
import contextlib
import copy
import functools
import threading
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

import ecdp.kernels as kernels
from ecdp.nets import GroupNormSiLU, ResBlock
from ecdp.speed import Speed


def prepare(net: nn.Module, speed: Speed) -> nn.Module:
    """The ECDPNet `net` as `speed` runs it: `net` itself for the reference, else a copy (later
    changes to `net` do not reach it) that takes and returns what `net` does: fp32 inputs in any
    layout, (eps_hat, z0_hat) in fp32, the conditioning of ``encode`` in the denoiser's dtype."""
    if speed == Speed.reference():
        return net
    net = copy.deepcopy(net)
    if not speed.autocast:
        net.encoder.to(speed.dtype("encoder"))
        net.denoiser.to(speed.dtype())
    if speed.fold_biases:
        for block in net.denoiser.modules():
            if isinstance(block, ResBlock):
                _fold_biases(block)
    for module in net.modules():
        if speed.onednn_1x1 and _pointwise(module):
            module.__class__ = OneDNNConv1x1
        if speed.norm_kernel and isinstance(module, GroupNormSiLU):
            module.impl = NORM_IMPLS[speed.norm_kernel]
    if speed.channels_last:
        net.to(memory_format=torch.channels_last)
    _cast_at_boundaries(net, speed)
    if speed.compile_mode:
        net.denoiser.compile(mode=speed.compile_mode, dynamic=False)
    return net.eval()


NORM_IMPLS = {"triton": kernels.group_norm_silu, "slab": kernels.group_norm_silu_slab}
"""Speed.norm_kernel's choices: what a GroupNormSiLU computes with."""


def _pointwise(module):
    return type(module) is nn.Conv2d and module.kernel_size == (1, 1) and module.padding == (0, 0)


def _fold_biases(block):
    """Two bias additions of a residual block fewer, the same function in real arithmetic:
    conv1(x) + b + time_proj(emb) = conv1_without_bias(x) + (time_proj(emb) + b), the bias moving
    into the time projection's, which the GroupNorm after it adds anyway; and, where the skip is a
    convolution, skip(x) + b' + conv2(h) = skip_without_bias(x) + conv2(h) with b' in conv2's bias."""
    with torch.no_grad():
        block.time_proj.bias += block.conv1.bias
        if isinstance(block.skip, nn.Conv2d):
            block.conv2.bias += block.skip.bias
            block.skip.bias = None
    block.conv1.bias = None


def _cast_at_boundaries(net, speed):
    """Forward hooks that give the encoder and the denoiser their inputs in their own dtype and
    layout, hand the encoder's features to the denoiser in its dtype, and return the denoiser's
    estimates in fp32; under ``speed.autocast`` the encoder, the conditioning and the denoiser run
    in autocast regions instead."""
    layout = torch.channels_last if speed.channels_last else torch.contiguous_format
    if speed.autocast:
        device = next(net.parameters()).device.type
        for owner, name in ((net.encoder, "forward"), (net.denoiser, "forward"), (net.denoiser, "block_conditioning")):
            setattr(owner, name, torch.autocast(device, dtype=speed.dtype())(getattr(owner, name)))
        encoder_dtype = denoiser_dtype = None
    else:
        encoder_dtype, denoiser_dtype = speed.dtype("encoder"), speed.dtype()
        net.encoder.register_forward_hook(lambda module, args, features: features.to(denoiser_dtype))
    net.encoder.register_forward_pre_hook(functools.partial(_first_input, dtype=encoder_dtype, layout=layout))
    net.denoiser.register_forward_pre_hook(functools.partial(_first_input, dtype=denoiser_dtype, layout=layout))
    net.denoiser.register_forward_hook(lambda module, args, estimates: tuple(e.float() for e in estimates))


def _first_input(module, args, dtype, layout):
    """args with its first tensor in `dtype` (None: as it is) and `layout`."""
    first = args[0] if dtype is None else args[0].to(dtype)
    return (first.contiguous(memory_format=layout), *args[1:])


@contextlib.contextmanager
def backends(speed: Speed):
    """Within the block, cuDNN's autotuner on if `speed` asks for it (``cudnn_benchmark``); the
    setting before is restored after. The setting is process-wide: a solve without it that runs
    meanwhile in another thread may be tuned too (only its speed changes)."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = before or speed.cudnn_benchmark
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


class OneDNNConv1x1(nn.Conv2d):
    """A 1x1 convolution that stays on oneDNN on the CPU.

    PyTorch sends fp32 1x1 convolutions to its slow im2col fallback (``_slow_conv2d_forward``) when
    it runs one thread (a rule in ``ConvParams::use_mkldnn``); oneDNN is 2.3-2.7x faster there
    (measured at 64 -> 32 channels, 192x256, and 128 -> 64, 96x128) and gives the same values.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != self.weight.dtype or torch.is_grad_enabled():
            return super().forward(x)
        return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                        self.groups)


def fused_solve(denoiser: nn.Module, z1: torch.Tensor, cond: tuple[torch.Tensor, ...], table: tuple,
                callback: Callable[[], None] | None = None) -> torch.Tensor:
    """z(t_end) of the fixed-step solve laid out in `table` (ode_coef.solver_table, times in z1's dtype).

    One network evaluation and one fused ode_update per row; the same steps as ecdp.sampling.solve
    (which stays the method's readable form), with each stage's arithmetic in one pass; callback()
    after every step, as there.
    """
    stages, t, coef = table
    batch = z1.shape[0]
    z = z_n = z1
    acc = None
    for k, stage in enumerate(stages):
        eps_hat, z0_hat = denoiser(z, t[k].expand(batch), cond)
        z, acc = kernels.ode_update(z, eps_hat, z0_hat, coef[k].expand(batch, -1),
                                    base=z_n if stage.uses_base else None,
                                    acc=acc if stage.uses_acc else None, write_acc=stage.writes_acc)
        if stage.ends_step:
            z_n = z
            if callback:
                callback()
    return z


# PyTorch captures one CUDA graph at a time per process: every GraphedSolve captures under this lock.
CAPTURE_LOCK = threading.Lock()


@dataclass
class _StaticSolve:
    """One input shape's static buffers, its replay and (on CUDA) the private stream it runs on."""

    replay: Callable[[], None]
    inputs: tuple[torch.Tensor, ...]
    out: torch.Tensor
    stream: torch.cuda.Stream | None = None


class GraphedSolve:
    """Replay a fixed-shape function fn(*tensors) -> tensor from static buffers, one set per input shape.

    On CUDA each set is a CUDA graph captured once (under the process-wide CAPTURE_LOCK) and
    replayed on a private stream: the inputs are copied in, the graph replayed and the output
    cloned out on that stream, after the caller's stream's pending work and before any of the
    caller's later work (the caller's stream waits on it). The next caller's copies queue behind
    on the same stream, so static buffers are never overwritten while the GPU still reads them;
    the host never synchronizes. Elsewhere the same static-buffer loop runs fn eagerly. A small
    LRU keeps the sets; a lock serializes the callers of one instance.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], max_graphs: int = 4, warmup: int = 2):
        self.fn, self.max_graphs, self.warmup = fn, max_graphs, warmup
        self.graphs = collections.OrderedDict()
        self.lock = threading.Lock()

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        key = tuple((tuple(t.shape), t.dtype, t.device) for t in inputs)
        with self.lock:
            if key not in self.graphs:
                self.graphs[key] = self._capture(tuple(t.clone() for t in inputs))
                if len(self.graphs) > self.max_graphs:
                    _, evicted = self.graphs.popitem(last=False)
                    if evicted.stream is not None:
                        evicted.stream.synchronize()   # its last replay done before its graph is freed
            self.graphs.move_to_end(key)
            return self._replay(self.graphs[key], inputs)

    @staticmethod
    def _replay(static, inputs):
        if static.stream is None:
            for buffer, t in zip(static.inputs, inputs):
                buffer.copy_(t)
            static.replay()
            return static.out.clone()
        caller = torch.cuda.current_stream(inputs[0].device)
        static.stream.wait_stream(caller)
        with torch.cuda.stream(static.stream):
            for buffer, t in zip(static.inputs, inputs):
                buffer.copy_(t)
            static.replay()
            out = static.out.clone()
        caller.wait_stream(static.stream)
        for t in inputs:
            t.record_stream(static.stream)
        out.record_stream(caller)
        return out

    def _capture(self, static_inputs):
        device = static_inputs[0].device
        if device.type != "cuda":
            static_out = self.fn(*static_inputs)
            replay = lambda: static_out.copy_(self.fn(*static_inputs))
            return _StaticSolve(replay, static_inputs, static_out)
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with CAPTURE_LOCK, torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self.fn(*static_inputs)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                static_out = self.fn(*static_inputs)
        return _StaticSolve(graph.replay, static_inputs, static_out, stream)
