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
"""How a solve runs: "fast" (conditioning cache; bf16 and CUDA graphs on a GPU) or "reference"
(the plain method)."""

DEFAULT_ENGINE = "fast"
"""The engine of every entry point unless one is asked for: on the CPU it computes what the
reference computes (to float rounding), only faster."""

ONNX_GRAPHS = ("full", "step")
"""ONNX exports: the whole solve in one graph, or an encoder graph plus a one-step graph."""

MAX_PIXELS = 2**24
"""The default limit on the pixels of an input image (4096 x 4096); ``--max-pixels`` raises it."""

QUALITY = 95
"""The default quality (1-100) of lossy outputs."""
