"""The ranges of the numbers a user, a config, a model folder or a checkpoint gives; imports no torch.

Every number is bounded by what it costs (memory, time) and by what float32, the type the method
computes in, can hold. The limits are stated here once; the config (``ecdp.config``), model
folders (``ecdp.modelfile``), samplers (``ecdp.sampling.SamplerSpec``), checkpoints and the
command-line options check against them where each value is made.
"""
import math
import os
import struct
from dataclasses import dataclass

FLOAT32_MAX = 3.4028234663852886e38
"""The largest finite float32."""

MAX_STEPS = 1000
"""Steps of a fixed-step solve. Each step costs one to four network evaluations (rk4: 4000 for a
solve at this bound, 80 times the sampler study's largest setting) and the time grid one number:
the bound keeps one image's solve to hours, not years, and its grid to kilobytes."""

MAX_SCALE = 16
"""Super-resolution factor: the result holds scale**2 times the input's pixels."""

MIN_SIGMA, MAX_SIGMA = 1e-4, 1.0
"""Range of sigma, the std of x - mu(y) (eq. 5). Below MIN_SIGMA the 8-bit rounding of the LR images
alone (about 1e-3) dominates and z = (x - mu) / sigma is float rounding noise blown up; above
MAX_SIGMA is more than the spread of a difference of two images in [0, 1]."""

MIN_TOLERANCE, MAX_TOLERANCE = 1e-8, 1.0
"""dopri5's atol and rtol: below 1e-8 even a float64 solve's error estimate nears rounding and its
steps shrink without end (float32 solves want 1e-6 or more: its resolution is 1.2e-7); above 1,
the solve is not checked at all."""

MAX_CROP = 4096
"""Training crop and center-resize sizes in HR pixels (the default --max-pixels is 4096 x 4096)."""

MAX_BATCH = 4096
"""Global training batch."""

MAX_BATCH_PIXELS = 2**26
"""HR pixels of one training batch (batch x crop**2; 64 crops of 1024 x 1024): each pixel carries
the network's activations through the forward and backward pass."""

MAX_TRAIN_STEPS = 10**9
"""Optimizer steps, warm-up, decay, logging and checkpoint intervals."""

MAX_THREADS = 4 * (os.cpu_count() or 1)
"""CPU threads of the network: beyond the cores they only contend, and each takes its own buffers
(OpenMP allocates per thread: a billion threads is hundreds of GB)."""

MAX_SEED = 2**64 - 1
"""Seeds: what a torch generator takes."""

MAX_WORKERS = 256
"""DataLoader worker processes per training process."""

MAX_SIGMA_CROPS = 100_000
"""Training crops over which sigma is estimated: each is decoded and upscaled once."""

MAX_PARAMETERS = 2**30
"""Parameters of a network described by a model folder (4 GiB in fp32): a config of a few bytes
must not build a network the machine cannot hold."""

MAX_NET_SIZE = 4096
"""Each size of a network described by a model folder: channels, embedding sizes, block counts."""

MAX_LEVELS = 8
"""U-Net levels (len(ch_mult)): each halves the HR size, so sizes must be multiples of 2**(levels-1)."""


def float32_holds(value: float) -> bool:
    """Whether float32 holds `value`: finite there, and not rounded to 0 when it is not 0."""
    try:
        (rounded,) = struct.unpack("f", struct.pack("f", value))
    except OverflowError:
        return False
    return math.isfinite(rounded) and (rounded != 0 or value == 0)


@dataclass(frozen=True)
class Range:
    """Allowed numbers: finite in float32, from ``low`` to ``high`` (None: unbounded), each end
    included unless open. ``value in range`` checks; ``str(range)`` says it in words."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value) -> bool:
        return self._within(value) and (isinstance(value, int) or float32_holds(value))

    def _within(self, value):
        """Whether `value` is a finite number between the ends, whatever float32 holds."""
        return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and (self.low is None or value > self.low or (value == self.low and not self.low_open))
                and (self.high is None or value < self.high or (value == self.high and not self.high_open)))

    def __str__(self):
        if self.high is None:
            return f"{'greater than' if self.low_open else 'at least'} {self.low}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"

    def describe(self, value) -> str:
        """What a value outside the range must be, in words: 'a finite number in [0, 1]'."""
        if isinstance(value, float):
            holds = " that float32 holds" if self._within(value) else ""
            return f"a finite number {self}{holds}"
        return str(self)


AT_LEAST_0, AT_LEAST_1, POSITIVE = Range(0), Range(1), Range(0, low_open=True)
STEPS = Range(1, MAX_STEPS)
SCALE = Range(1, MAX_SCALE)
SIGMA = Range(MIN_SIGMA, MAX_SIGMA)
TOLERANCE = Range(MIN_TOLERANCE, MAX_TOLERANCE)
SEED = Range(0, MAX_SEED)
