"""Training losses in normalized residual space: score matching and the image quality loss.

``net(z_t, t, cond) -> (eps_hat, z0_hat)`` is the denoiser contract; ``z0 = (x - mu) / sigma``.
"""
import functools
from typing import Callable

import torch
from torch import nn

from ecdp.parametrization import HybridDenoiser
from ecdp.pipeline import to_image
from ecdp.sampling import SamplerSpec, solve
from ecdp.sde import marginal_sample



def batch_noise(draw: Callable, shape: tuple[int, ...], *, generator: torch.Generator | None = None,
                batch_slice: tuple[int, int] = (0, 1), dtype: torch.dtype | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """draw(shape) (torch.rand or torch.randn) for this process's part of a global batch.

    batch_slice (rank, world): the batch of `shape[0]` samples is the rank-th of `world` equal parts
    of the global batch; the noise of the whole global batch is drawn from `generator` and this
    part returned, so each sample's noise depends on its place in the global batch, not on how many
    processes share it (world 1 draws exactly `draw(shape)`).
    """
    rank, world = batch_slice
    full = draw((shape[0] * world, *shape[1:]), generator=generator, dtype=dtype, device=device)
    return full[rank * shape[0]:(rank + 1) * shape[0]]


def score_matching_loss(net: Callable, z0: torch.Tensor, cond: tuple[torch.Tensor, ...], *, t_eps: float = 1e-5,
                        generator: torch.Generator | None = None, batch_slice: tuple[int, int] = (0, 1),
                        param_weights: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """Eq. 16: mean over pixels of w_eps |eps_hat - eps|^2 + w_z0 |z0_hat - z0|^2.

    t ~ U[t_eps, 1] per sample, eps ~ N(0, I), z_t = sqrt(a) z0 + sqrt(1 - a) eps; param_weights
    (w_eps, w_z0) weigh the two heads, equal in the paper. The noise is drawn by batch_noise.
    """
    noise = functools.partial(batch_noise, generator=generator, batch_slice=batch_slice, dtype=z0.dtype,
                              device=z0.device)
    t = t_eps + (1 - t_eps) * noise(torch.rand, (z0.shape[0],))
    eps = noise(torch.randn, z0.shape)
    eps_hat, z0_hat = net(marginal_sample(z0, t, eps), t, cond)
    w_eps, w_z0 = param_weights
    return w_eps * (eps_hat - eps).square().mean() + w_z0 * (z0_hat - z0).square().mean()


def quality_loss(net: nn.Module, y: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, sigma: float,
                 cond: tuple[torch.Tensor, ...] | None, feature: Callable[[torch.Tensor], torch.Tensor], *,
                 sampler: SamplerSpec = SamplerSpec(), param: str = "hybrid", c: float = 1.0, adjoint: bool = True,
                 generator: torch.Generator | None = None, batch_slice: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Eq. 19: mean |F(SR) - F(x)|, SR = to_image(mu, sigma, z_end), z_end the probability-flow
    solve of `sampler` from z1 ~ N(0, I) at t = 1.

    Gradients reach the parameters of `net` and `cond` (so the encoder trains through it); `cond`
    None encodes `y` here. adjoint=False backpropagates through `ecdp.sampling.solve` as it ran (the
    activations of every step kept); adjoint=True recomputes each step in the backward pass instead
    (``solve(..., checkpoint=True)``: the discrete adjoint, the same gradient with the memory of one
    step; fixed-step solvers only, else ValueError). z1 is drawn by batch_noise (eq. 12).
    """
    if adjoint:   # before anything runs
        sampler.require_fixed_step("the adjoint (use adjoint=False for dopri5)")
    cond = net.encode(y, x.shape[-2:]) if cond is None else cond
    z1 = batch_noise(torch.randn, x.shape, generator=generator, batch_slice=batch_slice, dtype=x.dtype,
                     device=x.device)
    z_end = solve(HybridDenoiser(net, param, c), z1, cond, sampler, checkpoint=adjoint)[0]
    with torch.no_grad():
        target = feature(x)
    return (feature(to_image(mu, sigma, z_end)) - target).abs().mean()
