"""What every benchmark shares: the device, the cases, the models, the inputs, and `measure`.

On CPU the suites run the default model (the tiny preset with random weights while none is
installed) at small sizes; with CUDA they add the paper preset at 64x64 -> 256x256.
"""
import copy
import ctypes
import ctypes.util
import os
import platform
import time
from dataclasses import dataclass

import torch
from torch import nn

from ecdp.modelfile import ModelConfig, ModelFileError, load_model, resolve_model
from ecdp.nets import PRESETS, ResBlock, build

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CUDA = DEVICE.type == "cuda"
# One CPU thread unless ECDP_BENCH_THREADS says otherwise: on a machine shared with other work, a
# descheduled second OpenMP thread stalls every parallel region (10x slower runs were measured).
THREADS = int(os.environ.get("ECDP_BENCH_THREADS", 1))
ENGINE_DTYPE = torch.bfloat16 if CUDA else torch.float32   # the GPU fast path's precision; the CPU's is in bench_cpu_engine
SEED = 0
RANDOM = "preset, random weights (ResBlock conv2 re-drawn, std 0.02)"


@dataclass(frozen=True)
class Case:
    """A model ("default" or a preset name), an LR size (square) and a batch size."""

    model: str
    lr: int
    batch: int

    def __str__(self):
        return f"{self.model}-{self.lr}px-b{self.batch}"

    @property
    def heavy(self):
        """Whether a call takes seconds here (CPU, beyond the smallest case): then it is timed once,
        without a warm-up call."""
        return not CUDA and (self.lr > 16 or self.batch > 1)

    @property
    def rounds(self):
        return 1 if self.heavy else 3

    @property
    def warmup(self):
        return 0 if self.heavy else 1


CPU_CASES = [Case("default", 16, 1), Case("default", 32, 1), Case("default", 16, 8)]
GPU_CASES = [Case("paper", 64, 1), Case("paper", 64, 8), Case("paper", 64, 32)]
CASES = CPU_CASES + (GPU_CASES if CUDA else [])
MAIN_CASE = GPU_CASES[0] if CUDA else CPU_CASES[0]   # the solver sweep and the compiled network


def timer():
    """perf_counter after the device's queued work is done (pytest-benchmark's timer)."""
    if CUDA:
        torch.cuda.synchronize()
    return time.perf_counter()


def device_name(device=DEVICE):
    """The GPU's name, or the CPU model and the thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{cpu_model()}, {threads} thread{'s' if threads > 1 else ''}"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def dtype_name(dtype):
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def load(name, device=DEVICE):
    """(net, config, description) of the default model or of a preset with random weights."""
    if name == "default":
        try:
            net, config = load_model(resolve_model("default"), device)
            return net, config, "default model"
        except ModelFileError:
            net, config = random_model("tiny")
            return net.to(device).eval(), config, f"no default model installed: tiny {RANDOM}"
    net, config = random_model(name)
    return net.to(device).eval(), config, f"{name} {RANDOM}"


def random_model(preset):
    """A preset network with seeded random weights; every ResBlock's zero-initialized conv2 gets
    small random values, so that each block contributes as in a trained model."""
    torch.manual_seed(SEED)
    net = build(preset)
    for block in net.modules():
        if isinstance(block, ResBlock):
            nn.init.normal_(block.conv2.weight, std=0.02)
            nn.init.normal_(block.conv2.bias, std=0.02)
    return net, ModelConfig(net=PRESETS[preset])


def trainable(net):
    """A copy of `net` in training mode."""
    return copy.deepcopy(net).train().requires_grad_(True)


def inputs(case, scale, device=DEVICE):
    """Seeded (y, z1): LR images in [0, 1] and the prior sample, on `device`."""
    generator = torch.Generator().manual_seed(SEED)
    y = torch.rand(case.batch, 3, case.lr, case.lr, generator=generator)
    z1 = torch.randn(case.batch, 3, case.lr * scale, case.lr * scale, generator=generator)
    return y.to(device), z1.to(device)


def shape_text(*shapes):
    return " -> ".join("x".join(map(str, shape)) for shape in shapes)


class PeakMemory:
    """Peak memory from `reset` on: CUDA max_memory_allocated, else the peak resident set size
    (VmHWM, reset through /proc/self/clear_refs after malloc_trim returned the allocator's free
    memory) above the resident set at the reset. None where neither is available."""

    def __init__(self, device):
        self.device, self.base = device, None
        self.method = ("cuda max_memory_allocated" if device.type == "cuda"
                       else "peak RSS (VmHWM) above the RSS after malloc_trim")

    def reset(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        try:
            ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")
            self.base = _status_mb("VmRSS")
        except (OSError, AttributeError):
            self.base = None

    def peak_mb(self):
        if self.base is None:
            return None
        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        return _status_mb("VmHWM") - self.base


def _status_mb(field):
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(field + ":")).split()[1]) / 1024


def measure(benchmark, fn, *, device=DEVICE, rounds=3, warmup=1, iterations=1, **info):
    """Time `fn` with pytest-benchmark; record the device, the peak memory over the warm-up and timed
    calls, and `info` (see `record`); return fn's last result."""
    meter = PeakMemory(device)
    meter.reset()
    result = benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup, iterations=iterations)
    record(benchmark, device=device_name(device), peak_mb=meter.peak_mb(), memory_method=meter.method, **info)
    return result


def record(benchmark, **info):
    """Add `info` to extra_info and the figures derived from the median time of one call: ms per
    image and images per second (info "batch"), TFLOP/s ("flops" per call), GB/s ("bytes" per call).
    The fractions of the floor are added when the JSON is written (bench.conftest)."""
    extra = benchmark.extra_info
    extra.update(info)
    if not benchmark.stats:
        return
    seconds, batch = benchmark.stats.stats.median, extra.get("batch", 1)
    extra.update(ms_per_image=1e3 * seconds / batch, images_per_s=batch / seconds)
    if extra.get("flops"):
        extra["tflops"] = extra["flops"] / seconds / 1e12
    if extra.get("bytes"):
        extra["gbs"] = extra["bytes"] / seconds / 1e9
