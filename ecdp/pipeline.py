"""The whole super-resolution map (y, z1) -> x: encoder, mu(y), probability-flow solve, output.

``x = clamp(mu(y) + sigma * z(t_end), 0, 1)`` where z solves eq. 13 from the prior sample z1 (eq. 12).
``SuperResolver.run`` is the one solve path: ``ecdp.Upscaler`` pads and tiles around it, the fast
engine (``ecdp.engine.FastResolver``) is a SuperResolver, and the exporters trace one.
"""
import functools
from typing import Callable

import torch
from torch import nn

from ecdp.parametrization import HybridDenoiser
from ecdp.resize import upscale as upscale_bicubic
from ecdp.sampling import SamplerSpec, solve


def to_image(mu: torch.Tensor, sigma: float, z: torch.Tensor) -> torch.Tensor:
    """x = clamp(mu + sigma z, 0, 1): a residual z in normalized space back to an image in [0, 1]
    (the inverse of eq. 5's z = (x - mu) / sigma); mu and z (B, 3, H, W). A value that is not
    finite stays as it is (clamping would turn infinity into 1), so that a broken model shows."""
    x = mu + sigma * z
    return torch.where(torch.isfinite(x), x.clamp(0, 1), x)


class SuperResolver(nn.Module):
    """A network and its model config with one sampler: ``run(y, z1) -> (x, nfe)``.

    net follows the denoiser contract and has ``encode(y, hr_size) -> cond``; sampler defaults to
    the model config's (``SamplerSpec.of(config)``); upscale is mu(y), bicubic by default.
    """

    engine, precision, tiles = "reference", "fp32", True   # tiles: any region can be solved alone

    def __init__(self, net: nn.Module, config, sampler: SamplerSpec | None = None, *,
                 upscale: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.net = net
        self.upscale = upscale or functools.partial(upscale_bicubic, scale=config.scale)
        self.scale, self.sigma, self.lr_multiple = config.scale, config.sigma, config.lr_multiple
        self.model = HybridDenoiser(net, config.param, config.c)
        self.sampler = sampler or SamplerSpec.of(config)

    def noise_shape(self, y: torch.Tensor) -> tuple[int, int, int, int]:
        """Shape of the prior sample z1 for an LR batch y."""
        return (y.shape[0], 3, y.shape[-2] * self.scale, y.shape[-1] * self.scale)

    def latent(self, y: torch.Tensor, z1: torch.Tensor, callback: Callable[[], None] | None = None
               ) -> tuple[torch.Tensor, int | None]:
        """(z(t_end), nfe): the probability-flow solve from z1, conditioned on y's encoder features;
        callback as for ``ecdp.sampling.solve``."""
        return solve(self.model, z1, self.net.encode(y, z1.shape[-2:]), self.sampler, callback=callback)

    def run(self, y: torch.Tensor, z1: torch.Tensor, mu: torch.Tensor | None = None,
            callback: Callable[[], None] | None = None) -> tuple[torch.Tensor, int | None]:
        """(x, nfe) for LR images y (B, 3, h, w) in [0, 1] and prior noise z1 (B, 3, s h, s w).

        mu defaults to upscale(y); a caller that solves part of an image passes that part's mu of
        the whole image. x (B, 3, s h, s w) in [0, 1], fp32.
        """
        z, nfe = self.latent(y, z1, callback)
        return to_image(self.upscale(y) if mu is None else mu, self.sigma, z), nfe

    def forward(self, y: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        return self.run(y, z1)[0]
