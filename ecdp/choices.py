"""The options a user can set: their choices and defaults, each defined once; imports no torch.

Command-line parsers read their choices from here, so ``ecdp --help`` answers without loading
PyTorch; the modules that implement each choice check against the same lists.
"""

SOLVERS = ("dopri5", "euler", "heun", "rk4", "dpmpp2m")
"""Probability-flow ODE solvers: adaptive dopri5 (torchdiffeq) and the fixed-step ones below."""

EVALS_PER_STEP = {"euler": 1, "heun": 2, "rk4": 4, "dpmpp2m": 1}
"""Network evaluations per step of each fixed-step solver."""

GRIDS = ("uniform", "logsnr")
"""Time grids of the fixed-step solvers: uniform in t, or uniform in log-SNR."""

PARAMETRIZATIONS = ("hybrid", "eps", "x0")
"""Noise estimates of eq. 14, 15 and 18."""

STAGES = ("encoder", "score", "quality")
"""Training stages: the L1 encoder regressor, score matching (eq. 16), and the quality loss (eq. 19)."""

ENGINES = ("fast", "reference")
"""How a solve runs: "fast" (channels_last on the CPU; bf16 on a GPU and on CPUs with bf16
arithmetic; CUDA graphs on a GPU) or "reference" (the plain method, fp32)."""

DEFAULT_ENGINE = "fast"
"""The engine of every entry point unless one is asked for: it computes what the reference
computes, only faster: to float rounding in fp32; in bf16 to within 1/255 of the output with the
model's own sampler (0.6/255 measured on a photo; up to 1.5/255 with other fixed-step solvers)."""

PRECISIONS = ("auto", "fp32", "bf16")
"""The fast engine's network precision: "auto" is bf16 where the hardware computes it natively
(CUDA; CPUs with AVX512-BF16 or AMX), fp32 elsewhere."""

ONNX_GRAPHS = ("full", "step")
"""ONNX exports: the whole solve in one graph, or an encoder graph plus a one-step graph."""

MAX_PIXELS = 2**24
"""The default limit on the pixels of an input image (4096 x 4096); ``--max-pixels`` raises it."""

QUALITY = 95
"""The default quality (1-100) of lossy outputs."""
