"""Speed: how a solve runs, apart from what it computes, as one value chosen in one place.

A ``Speed`` names every option that makes sampling faster without changing the method: the
network's precision, its memory layout, the Triton kernels, the fused ODE update, CUDA graphs and
``torch.compile``. ``Speed.choose`` turns the user's options (engine, precision, compile) and the
device into one; ``ecdp.acceleration`` carries it out behind the denoiser contract.

Which Triton kernels run on CUDA is decided by the device command's figures (``bench/gpu/run.sh``),
recorded in ``KERNEL_FIGURES``: a kernel runs at a site only where it was measured faster than what
would run there instead.
"""
from dataclasses import dataclass, fields

import torch

from ecdp.choices import DEFAULT_ENGINE, ENGINES, PRECISIONS

NETWORK_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
NORM_KERNELS = ("triton", "slab")

KERNEL_FIGURES = {
    "group_norm_silu": "NVIDIA H200 at 41605cb, paper preset 64 -> 256, Heun 3, CUDA graph: 14.7 ms/img with the kernel, "
                       "21.7 without it (eager GroupNorm) at batch 8; 29.7 and 49.2 at batch 1. Inductor's fusion beats "
                       "it at every site (microbenchmark: 63-151 us against 104-301 us), so under torch.compile the "
                       "network runs Inductor's.",
    "ode_update": "NVIDIA H200 at 41605cb: end to end 14.7 ms/img with the fused update, 14.8 without (batch 8), "
                  "29.7 and 29.9 at batch 1; Inductor's version reaches 29-47% of a copy's bandwidth against its "
                  "16-26%. It does not earn its place: not used unless asked for.",
}
"""The measurements behind Speed.auto's kernel choices on CUDA, per kernel."""


@dataclass(frozen=True)
class Speed:
    """How a solve runs; the default is the reference: the plain method in fp32. Checked when made.

    precision: the denoiser's arithmetic ("fp32", "bf16" or "fp16"; the ODE state and the output
    stay fp32); encoder_precision: the encoder's. autocast: reach that precision through
    ``torch.autocast`` (fp32 weights, casts traced into the graph: the exporters) instead of
    weights cast once. channels_last: the network's memory layout. onednn_1x1: 1x1 convolutions
    kept on oneDNN (CPU). fold_biases: each residual block's conv1 bias folded into its time
    projection's, and its skip convolution's into conv2's (exact in real arithmetic; a kernel fewer
    per bias on CUDA). norm_kernel: the
    GroupNorm + SiLU at every norm site: None, the reference (which torch.compile fuses by itself);
    "triton", ``ecdp.kernels.group_norm_silu`` (eager: under torch.compile it hands Inductor the
    reference); "slab", ``ecdp.kernels.group_norm_silu_slab``, an operator torch.compile keeps
    (inference, CUDA). fused_ode: fixed-step solves through
    the fused ODE update. cuda_graphs: fixed-step solves replayed from CUDA graphs.
    cudnn_benchmark: cuDNN's autotuner on while a solve runs (each input shape's first call times
    the convolution algorithms, later calls reuse the fastest; a replayed solve tunes while warming
    up, before its capture).
    compile_mode: the denoiser through ``torch.compile`` in that mode (None: eager). Raises
    ValueError for an unknown precision, norm kernel or compile mode.
    """

    precision: str = "fp32"
    encoder_precision: str = "fp32"
    autocast: bool = False
    channels_last: bool = False
    onednn_1x1: bool = False
    fold_biases: bool = False
    norm_kernel: str | None = None
    fused_ode: bool = False
    cuda_graphs: bool = False
    cudnn_benchmark: bool = False
    compile_mode: str | None = None

    def __post_init__(self):
        for name in ("precision", "encoder_precision"):
            if getattr(self, name) not in NETWORK_PRECISIONS:
                raise ValueError(f"unknown {name.replace('_', ' ')} {getattr(self, name)!r}; "
                                 f"choose one of {', '.join(NETWORK_PRECISIONS)}")
        if self.norm_kernel not in (None, *NORM_KERNELS):
            raise ValueError(f"unknown norm kernel {self.norm_kernel!r}; choose one of {', '.join(NORM_KERNELS)}")
        if self.compile_mode not in (None, *COMPILE_MODES):
            raise ValueError(f"unknown compile mode {self.compile_mode!r}; choose one of {', '.join(COMPILE_MODES)}")

    @classmethod
    def reference(cls) -> "Speed":
        """The plain method: fp32, eager, nothing fused."""
        return cls()

    @classmethod
    def export(cls, precision: str) -> "Speed":
        """What the exporters trace: the network under autocast at `precision` ("fp32", "fp16" or "bf16")."""
        return cls(precision=precision, encoder_precision=precision, autocast=precision != "fp32")

    @classmethod
    def auto(cls, device: torch.device | str, fixed_step: bool, precision: str = "auto",
             compile: bool = False) -> "Speed":
        """The fast engine on `device` for a fixed-step solver or not (dopri5).

        precision "auto" is bf16 on CUDA, and on CPUs with bf16 arithmetic (native_bf16) for
        fixed-step solvers (dopri5's error control would see bf16's rounding); else fp32. On CUDA:
        weights cast once, channels_last, the residual blocks' biases folded, cuDNN's autotuner, fixed-step
        solves replayed from CUDA graphs, and the Triton kernels that KERNEL_FIGURES shows faster than the alternative
        (never under compile, where Inductor fuses the same sites faster). On the CPU: the
        denoiser's weights cast once (the encoder stays fp32), channels_last and 1x1 convolutions
        on oneDNN. Raises ValueError for an unknown precision, or bf16 on a CPU where oneDNN has no
        bf16 convolutions.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        mode = "default" if compile else None
        if torch.device(device).type == "cuda":
            precision = "bf16" if precision == "auto" else precision
            return cls(precision=precision, encoder_precision=precision, channels_last=True, fold_biases=True,
                       norm_kernel="triton" if not compile and _triton_available() else None, cuda_graphs=fixed_step,
                       cudnn_benchmark=True, compile_mode=mode)
        if precision == "auto":
            precision = "bf16" if native_bf16() and fixed_step else "fp32"
        if precision == "bf16" and not bf16_supported():
            raise ValueError("precision bf16 needs a CPU with AVX-512 (oneDNN's bf16 convolutions); use fp32")
        return cls(precision=precision, channels_last=True, onednn_1x1=torch.backends.mkldnn.is_available(),
                   compile_mode=mode)

    @classmethod
    def choose(cls, engine: str = DEFAULT_ENGINE, device: torch.device | str = "cpu", fixed_step: bool = True,
               precision: str = "auto", compile: bool = False) -> "Speed":
        """The Speed of the user's options, as every entry point takes them (``--engine``,
        ``--precision``, ``--compile``): engine "reference" is Speed.reference() (fp32, no
        compile), "fast" is Speed.auto. Raises ValueError, in one sentence, for an unknown engine
        or precision, or an option the reference engine does not take."""
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        if engine == "fast":
            return cls.auto(device, fixed_step, precision, compile)
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if precision == "bf16":
            raise ValueError("precision bf16 needs the fast engine (the reference engine runs fp32)")
        if compile:
            raise ValueError("compile needs the fast engine (the reference engine runs the plain method)")
        return cls.reference()

    @property
    def engine(self) -> str:
        """"reference" for the plain method, else "fast"."""
        return "reference" if self == Speed.reference() else "fast"

    def dtype(self, part: str = "denoiser") -> torch.dtype:
        """The torch dtype of the denoiser's ("denoiser") or the encoder's ("encoder") arithmetic."""
        return NETWORK_PRECISIONS[self.encoder_precision if part == "encoder" else self.precision]

    def describe(self) -> str:
        """One line for reports and benchmark rows: the precision, then every option that is on."""
        words = [self.precision] + [f.name.replace("_", " ") for f in fields(self) if getattr(self, f.name) is True]
        if self.encoder_precision != self.precision:
            words.insert(1, f"encoder {self.encoder_precision}")
        if self.norm_kernel:
            words.append(f"{self.norm_kernel} norm")
        if self.compile_mode:
            words.append(f"compile {self.compile_mode}")
        return ", ".join(words)


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


def _triton_available() -> bool:
    from ecdp.kernels import triton_available

    return triton_available()
