"""Noise estimate of the denoiser under the eps-, x0- and hybrid parametrizations (eq. 14, 15, 18).

The denoiser returns two heads, ``(eps_hat, z0_hat)``. Each parametrization is written as a
noise estimate ``eps_hyb``; the score in x is ``-eps_hyb / (sigma sqrt(1 - alpha))``.
"""
from typing import Callable

import torch

from ecdp.choices import PARAMETRIZATIONS
from ecdp.sde import _per_sample, alpha


def mixing_weight(t: torch.Tensor, param: str = "hybrid", c: float = 1.0) -> torch.Tensor:
    """lambda(t) of eq. 18: alpha(t)**c for hybrid, 1 for eps, 0 for x0."""
    if param == "hybrid":
        return alpha(t) ** c
    if param == "eps":
        return torch.ones_like(t)
    if param == "x0":
        return torch.zeros_like(t)
    raise ValueError(f"unknown parametrization {param!r}; choose one of {PARAMETRIZATIONS}")


def noise_estimate(z_t: torch.Tensor, t: torch.Tensor, eps_hat: torch.Tensor, z0_hat: torch.Tensor,
                   param: str = "hybrid", c: float = 1.0) -> torch.Tensor:
    """eps_hyb = lam eps_hat + (1 - lam) (z_t - sqrt(a) z0_hat) / sqrt(1 - a): eq. 18 with eq. 14, 15."""
    a = _per_sample(alpha(t), z_t)
    lam = _per_sample(mixing_weight(t, param, c), z_t)
    eps_from_z0 = (z_t - a.sqrt() * z0_hat) / (1 - a).sqrt()
    return lam * eps_hat + (1 - lam) * eps_from_z0


def data_estimate(z_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The z_0 implied by a noise estimate: (z_t - sqrt(1 - a) eps) / sqrt(a)."""
    a = _per_sample(alpha(t), z_t)
    return (z_t - (1 - a).sqrt() * eps) / a.sqrt()


class HybridDenoiser:
    """The network under its parametrization, the one callable the samplers see (in the spirit of
    edm's EDMPrecond): ``(z_t, t, cond) -> eps_hyb`` (eq. 18 with eq. 14, 15), t of shape (B,).

    denoiser follows the denoiser contract ``D(z_t, t, cond) -> (eps_hat, z0_hat)`` (an
    ``ECDPNet`` or its ``.denoiser``); param and c as for mixing_weight. Raises ValueError for an
    unknown parametrization.
    """

    def __init__(self, denoiser: Callable, param: str = "hybrid", c: float = 1.0):
        if param not in PARAMETRIZATIONS:
            raise ValueError(f"unknown parametrization {param!r}; choose one of {PARAMETRIZATIONS}")
        self.denoiser, self.param, self.c = denoiser, param, c

    def __call__(self, z_t: torch.Tensor, t: torch.Tensor, cond: tuple[torch.Tensor, ...]) -> torch.Tensor:
        eps_hat, z0_hat = self.denoiser(z_t, t, cond)
        return noise_estimate(z_t, t, eps_hat, z0_hat, self.param, self.c)
