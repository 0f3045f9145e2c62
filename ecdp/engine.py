"""Fast engines: everything that makes sampling faster plugs in here, behind the denoiser contract.

- ``FastDenoiser``: the denoiser contract as the fast engine runs it: autocast (bf16/fp16, fp32
  ODE state) or the weights' own dtype, channels_last, and ``torch.compile``.
- ``cpu_network``: the network as the CPU runs it fastest: channels_last (oneDNN's convolutions
  run 1.3-3.6x faster on it than on NCHW here), the denoiser's weights cast once to bf16 on CPUs
  that compute bf16 natively (``native_bf16``), and 1x1 convolutions kept on oneDNN.
- ``FastResolver``: the fixed-step solve driven by the fused ODE update (``ecdp.kernels.ode_update``)
  over a coefficient table precomputed on the device (``ecdp.kernels.ode_coef.solver_table``):
  one kernel per network evaluation instead of about twenty element-wise ones, no host copies.
- ``GraphedSolve``: on CUDA, the whole fixed-step solve (encoder, cache, every stage of every step)
  captured once per input shape in a CUDA graph and replayed on a private stream; one capture at
  a time per process; safe to call from several threads; a small LRU of graphs. A FastResolver
  made with ``cuda_graphs=True`` replays its solves from one.
"""
import collections
import contextlib
import copy
import threading
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

import ecdp.kernels as kernels
from ecdp.choices import PRECISIONS
from ecdp.kernels.ode_coef import solver_table
from ecdp.pipeline import SuperResolver
from ecdp.sampling import SamplerSpec, solve


class FastDenoiser(nn.Module):
    """The denoiser contract D(z_t, t, cond) of an ECDPNet, with its encode(y, hr_size), as the fast
    engine runs them.

    dtype turns on autocast; a denoiser whose weights are in another dtype than fp32 (cpu_network)
    gets its inputs in that dtype. Either way eps_hat and z0_hat come back in fp32.
    """

    def __init__(self, net: nn.Module, *, dtype: torch.dtype | None = None, channels_last: bool = False,
                 compile_mode: str | None = None):
        super().__init__()
        self.net, self.dtype, self.channels_last = net, dtype, channels_last
        if channels_last:
            net.to(memory_format=torch.channels_last)
        self.denoiser = torch.compile(net.denoiser, mode=compile_mode, dynamic=False) if compile_mode else net.denoiser
        self.weight_dtype = net.denoiser.conv_in.weight.dtype

    def _autocast(self, device):
        if self.dtype in (None, torch.float32):
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def _layout(self, x):
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def encode(self, y: torch.Tensor, hr_size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        """Per-block conditioning for the LR batch y (as ``ECDPNet.encode``), valid for every t of the
        solve, in the denoiser's dtype."""
        with self._autocast(y.device):
            features = self.net.encoder(self._layout(y))
            if self.weight_dtype != torch.float32:   # cpu_network's bf16 denoiser
                features = features.to(self.weight_dtype)
            return self.net.denoiser.block_conditioning(features, hr_size)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond: tuple[torch.Tensor, ...]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        with self._autocast(z_t.device):
            eps_hat, z0_hat = self.denoiser(self._layout(z_t.to(self.weight_dtype)), t, cond)
        return eps_hat.float(), z0_hat.float()


def bf16_supported() -> bool:
    """Whether oneDNN runs bf16 convolutions on this CPU at all (it needs AVX-512 BW/VL/DQ, natively
    or emulated); without it a bf16 convolution raises."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX-BF16, from /proc/cpuinfo) and oneDNN
    uses it, where bf16 convolutions run about twice as fast as fp32; False where that cannot be read."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags)) and bf16_supported()


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


def cpu_network(net: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A copy of an ECDPNet for CPU inference: the denoiser's weights in `dtype` (the encoder stays
    fp32), every weight channels_last, and every 1x1 convolution an OneDNNConv1x1 (same weights,
    same state_dict). `net` itself is left as it is."""
    net = copy.deepcopy(net)
    net.denoiser.to(dtype)
    for module in net.modules():
        pointwise = module.kernel_size == (1, 1) and module.padding == (0, 0) if type(module) is nn.Conv2d else False
        if pointwise and torch.backends.mkldnn.is_available():
            module.__class__ = OneDNNConv1x1
    return net.to(memory_format=torch.channels_last).eval()


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


class FastResolver(SuperResolver):
    """A SuperResolver whose fixed-step solves may run fused_solve, and be replayed from CUDA graphs.

    fused_ode: True or False, or None for "where the Triton ODE kernel serves" (CUDA tensors with
    the kernels enabled). The coefficient table is built once per device and dtype of z1.
    dopri5 always runs ecdp.sampling's adaptive solve. cuda_graphs=True (fixed-step solvers)
    replays each solve on CUDA from a GraphedSolve of up to max_graphs input shapes; a callback
    is then called once per step after the replay (the captured steps cannot call the host).
    precision names the network's precision, for the caller to report. Raises ValueError for
    cuda_graphs with dopri5.
    """

    engine = "fast"

    def __init__(self, denoiser: FastDenoiser, config, sampler: SamplerSpec | None = None, *,
                 fused_ode: bool | None = None, cuda_graphs: bool = False, max_graphs: int = 4, precision: str = "fp32"):
        super().__init__(denoiser, config, sampler)
        self.fused_ode, self.tables, self.precision = fused_ode, {}, precision
        if cuda_graphs:
            self.sampler.require_fixed_step("a captured solve")
        self.graphs = GraphedSolve(lambda y, z1: self._solve(y, z1)[0], max_graphs) if cuda_graphs else None

    def uses_fused(self, z1: torch.Tensor) -> bool:
        """Whether a solve from z1 runs fused_solve."""
        if not self.sampler.fixed_step:
            return False
        if self.fused_ode is None:
            return z1.is_cuda and kernels.enabled() and kernels.triton_available()
        return self.fused_ode

    def table(self, z1: torch.Tensor) -> tuple:
        """The solver table (ode_coef.solver_table) on z1's device, times in its dtype."""
        key = (z1.device, z1.dtype)
        if key not in self.tables:
            ts = self.sampler.times(dtype=z1.dtype, device=z1.device)
            stages, t, coef = solver_table(self.sampler.solver, ts.double(), param=self.model.param, c=self.model.c)
            self.tables[key] = stages, t.to(z1.dtype), coef
        return self.tables[key]

    def latent(self, y: torch.Tensor, z1: torch.Tensor, callback: Callable[[], None] | None = None
               ) -> tuple[torch.Tensor, int | None]:
        if self.graphs is None or not z1.is_cuda:
            return self._solve(y, z1, callback)
        z = self.graphs(y, z1)
        for _ in range(self.sampler.steps if callback else 0):
            callback()
        return z, self.sampler.nfe

    def _solve(self, y, z1, callback=None):
        """latent without CUDA graphs: fused_solve or ecdp.sampling.solve."""
        cond = self.net.encode(y, z1.shape[-2:])
        if self.uses_fused(z1):
            return fused_solve(self.net, z1, cond, self.table(z1), callback), self.sampler.nfe
        return solve(self.model, z1, cond, self.sampler, callback=callback)


def fast_resolver(net: nn.Module, config, sampler: SamplerSpec | None = None, *, dtype: torch.dtype | None = None,
                  channels_last: bool = False, compile_mode: str | None = None, **options) -> FastResolver:
    """A FastResolver whose denoiser is the cached (and optionally compiled) one; dtype is autocast's;
    options as for FastResolver."""
    denoiser = FastDenoiser(net, dtype=dtype, channels_last=channels_last,
                              compile_mode=compile_mode)
    return FastResolver(denoiser, config, sampler, **options)


def fast_engine(net: nn.Module, config, device: torch.device | str, sampler: SamplerSpec | None = None, *,
                precision: str = "auto", compile_mode: str | None = None) -> FastResolver:
    """The FastResolver every entry point runs on `device`, its precision in ``.precision``.

    precision "auto" is "bf16" on CUDA and on CPUs with bf16 arithmetic (native_bf16), else
    "fp32"; dopri5 gets fp32 on the CPU (its error control would see bf16's rounding). On CUDA the
    network runs under autocast (fp32 GroupNorm statistics) and fixed-step solves replay from CUDA
    graphs; on the CPU the resolver runs cpu_network(net, dtype) in channels_last: a copy, made
    here, that later changes to `net` do not reach. sampler defaults to the config's. Raises
    ValueError for an unknown precision, or bf16 on a CPU where oneDNN has no bf16 convolutions.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    sampler = sampler or SamplerSpec.of(config)
    on_gpu = torch.device(device).type == "cuda"
    if precision == "auto":
        precision = "bf16" if on_gpu or native_bf16() and sampler.fixed_step else "fp32"
    if precision == "bf16" and not on_gpu and not bf16_supported():
        raise ValueError("precision bf16 needs a CPU with AVX-512 (oneDNN's bf16 convolutions); use fp32")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    if on_gpu:
        return fast_resolver(net, config, sampler, dtype=dtype, compile_mode=compile_mode,
                             cuda_graphs=sampler.fixed_step, precision=precision)
    return fast_resolver(cpu_network(net, dtype), config, sampler, channels_last=True, compile_mode=compile_mode,
                         precision=precision)


# PyTorch captures one CUDA graph at a time per process: every GraphedSolve captures under this lock.
CAPTURE_LOCK = threading.Lock()


@dataclass
class _StaticSolve:
    """One input shape's static buffers, its replay and (on CUDA) the private stream it runs on."""

    replay: object
    y: torch.Tensor
    z1: torch.Tensor
    out: torch.Tensor
    stream: object = None


class GraphedSolve:
    """Replay a fixed-shape function fn(y, z1) -> tensor from static buffers, one set per input shape.

    On CUDA each set is a CUDA graph captured once (under the process-wide CAPTURE_LOCK) and
    replayed on a private stream: the inputs are copied in, the graph replayed and the output
    cloned out on that stream, after the caller's stream's pending work and before any of the
    caller's later work (the caller's stream waits on it). The next caller's copies queue behind
    on the same stream, so static buffers are never overwritten while the GPU still reads them;
    the host never synchronizes. Elsewhere the same static-buffer loop runs fn eagerly. A small
    LRU keeps the sets; a lock serializes the callers of one instance.
    """

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], max_graphs: int = 4, warmup: int = 2):
        self.fn, self.max_graphs, self.warmup = fn, max_graphs, warmup
        self.graphs = collections.OrderedDict()
        self.lock = threading.Lock()

    def __call__(self, y: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        key = (tuple(y.shape), y.dtype, y.device)
        with self.lock:
            if key not in self.graphs:
                self.graphs[key] = self._capture(y.clone(), z1.clone())
                if len(self.graphs) > self.max_graphs:
                    _, evicted = self.graphs.popitem(last=False)
                    if evicted.stream is not None:
                        evicted.stream.synchronize()   # its last replay done before its graph is freed
            self.graphs.move_to_end(key)
            return self._replay(self.graphs[key], y, z1)

    @staticmethod
    def _replay(static, y, z1):
        if static.stream is None:
            static.y.copy_(y)
            static.z1.copy_(z1)
            static.replay()
            return static.out.clone()
        caller = torch.cuda.current_stream(y.device)
        static.stream.wait_stream(caller)
        with torch.cuda.stream(static.stream):
            static.y.copy_(y)
            static.z1.copy_(z1)
            static.replay()
            out = static.out.clone()
        caller.wait_stream(static.stream)
        for t in (y, z1):
            t.record_stream(static.stream)
        out.record_stream(caller)
        return out

    def _capture(self, static_y, static_z1):
        if static_y.device.type != "cuda":
            static_out = self.fn(static_y, static_z1)
            replay = lambda: static_out.copy_(self.fn(static_y, static_z1))
            return _StaticSolve(replay, static_y, static_z1, static_out)
        stream = torch.cuda.Stream(device=static_y.device)
        stream.wait_stream(torch.cuda.current_stream(static_y.device))
        with CAPTURE_LOCK, torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self.fn(static_y, static_z1)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                static_out = self.fn(static_y, static_z1)
        return _StaticSolve(graph.replay, static_y, static_z1, static_out, stream)
