"""The conditional VP-SDE of the paper (eq. 5 to 13) in normalized residual space.

With ``z = (x - mu(y)) / sigma`` the forward SDE (eq. 5) becomes the plain VP-SDE
``dz = -beta(t)/2 z dt + sqrt(beta(t)) dw``; all functions here act on ``z``.
"""
import math

import numpy as np
import torch

BETA_MIN = 0.1
BETA_MAX = 20.0


def beta(t: torch.Tensor) -> torch.Tensor:
    """Linear noise rate beta(t) = BETA_MIN + t (BETA_MAX - BETA_MIN)."""
    return BETA_MIN + t * (BETA_MAX - BETA_MIN)


def alpha(t: torch.Tensor) -> torch.Tensor:
    """alpha(t) = exp(-int_0^t beta(s) ds), eq. 11."""
    return torch.exp(-BETA_MIN * t - 0.5 * (BETA_MAX - BETA_MIN) * t**2)


def marginal_sample(z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z_t = sqrt(alpha) z_0 + sqrt(1 - alpha) eps: eq. 9, 10 and 17 in z."""
    a = _per_sample(alpha(t), z0)
    return a.sqrt() * z0 + (1 - a).sqrt() * eps


NOISE_BLOCK = 512


def seeded_prior(seed: int, shape: tuple[int, int, int, int], region: tuple[int, int, int, int] | None = None, *,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """The prior sample z(1) ~ N(0, I) (eq. 12) of an image batch as a function of the seed and the position.

    shape is (B, C, H, W) in HR pixels; region (top, left, height, width) selects a part of it
    (default: all), so that a tile's noise is drawn for that tile alone. An image that fits in one
    block (H and W at most NOISE_BLOCK) gets ``torch.randn(shape)`` from a CPU generator seeded
    with `seed`, the noise the exported runners draw. A larger one is drawn block by block on a
    fixed grid of NOISE_BLOCK x NOISE_BLOCK pixels, each block of each sample from a generator
    seeded by (seed, sample, block row, block column): the noise at a pixel is the same whichever
    region it is drawn in. Returns a float32 tensor (B, C, height, width) on `device`.
    """
    batch, channels, height, width = shape
    top, left, h, w = region or (0, 0, height, width)
    if height <= NOISE_BLOCK and width <= NOISE_BLOCK:
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        return noise[..., top:top + h, left:left + w].to(device)
    n = NOISE_BLOCK
    noise = torch.empty(batch, channels, h, w)
    for i in range(top // n, -(-(top + h) // n)):
        r0, r1 = max(top, i * n), min(top + h, (i + 1) * n)
        for j in range(left // n, -(-(left + w) // n)):
            c0, c1 = max(left, j * n), min(left + w, (j + 1) * n)
            for b in range(batch):
                block = torch.randn(channels, n, n, generator=_block_generator(seed, b, i, j))
                noise[b, :, r0 - top:r1 - top, c0 - left:c1 - left] = block[:, r0 - i * n:r1 - i * n,
                                                                            c0 - j * n:c1 - j * n]
    return noise.to(device)


def _block_generator(seed, sample, row, col):
    """A CPU generator seeded from (seed, sample, row, col) by numpy's SeedSequence hash."""
    state = np.random.SeedSequence([seed % 2**64, sample, row, col]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def probability_flow_drift(z: torch.Tensor, t: torch.Tensor, eps_hyb: torch.Tensor) -> torch.Tensor:
    """dz/dt = -beta(t)/2 (z - eps_hyb / sqrt(1 - alpha(t))): eq. 13 in z.

    The score in x is -eps_hyb / (sigma sqrt(1 - alpha)), so sigma^2 s_theta of eq. 13
    becomes -sigma eps_hyb / sqrt(1 - alpha) and sigma cancels in z.
    """
    b = _per_sample(beta(t), z)
    a = _per_sample(alpha(t), z)
    return -0.5 * b * (z - eps_hyb / (1 - a).sqrt())


def log_snr(t: torch.Tensor) -> torch.Tensor:
    """log(alpha / (1 - alpha)), decreasing in t."""
    a = alpha(t)
    return torch.log(a) - torch.log1p(-a)


def t_from_log_snr(log_snr_value: torch.Tensor) -> torch.Tensor:
    """Inverse of log_snr: solve BETA_MIN t + (BETA_MAX - BETA_MIN) t^2 / 2 = log(1 + e^-log_snr)."""
    c = torch.nn.functional.softplus(-log_snr_value)
    d = BETA_MAX - BETA_MIN
    return 2 * c / (BETA_MIN + torch.sqrt(BETA_MIN**2 + 2 * d * c))


def time_grid(steps: int, *, spacing: str, t_end: float = 1e-3, dtype: torch.dtype = torch.float64,
              device: torch.device | str | None = None) -> torch.Tensor:
    """Decreasing times t_0 = 1 > ... > t_steps = t_end, uniform in t or in log-SNR.

    Built on `device` from Python scalars: no host-to-device copy, so it can run inside a CUDA graph.
    """
    if spacing == "uniform":
        return torch.linspace(1.0, t_end, steps + 1, dtype=dtype, device=device)
    if spacing == "logsnr":
        ends = [_log_snr_scalar(1.0), _log_snr_scalar(t_end)]
        log_snrs = torch.linspace(ends[0], ends[1], steps + 1, dtype=torch.float64, device=device)
        grid = t_from_log_snr(log_snrs)
        grid[0].fill_(1.0)   # fill_ takes the scalar as a kernel argument: no copy from the host
        grid[-1].fill_(t_end)
        return grid.to(dtype)
    raise ValueError(f"unknown time grid {spacing!r}; choose 'uniform' or 'logsnr'")


def _log_snr_scalar(t):
    log_a = -BETA_MIN * t - 0.5 * (BETA_MAX - BETA_MIN) * t**2
    return log_a - math.log(-math.expm1(log_a))


def _per_sample(v, like):
    """Broadcast a per-sample (B,) or scalar tensor over an image batch."""
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return v.reshape(-1, *([1] * (like.dim() - 1))) if v.dim() == 1 else v
