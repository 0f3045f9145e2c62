"""The whole super-resolution map (y, z1) -> x: encoder, mu(y), probability-flow solve, output.

``x = clamp(mu(y) + sigma * z(t_end), 0, 1)`` where z solves eq. 13 from the prior sample z1 (eq. 12).
``SuperResolver.run`` is the one solve path, whatever its Speed: ``ecdp.Upscaler`` pads and tiles
around it, and the exporters trace it.
"""
import functools
from typing import Callable

import torch
from torch import nn

from ecdp.acceleration import GraphedSolve, backends, fused_solve, prepare
from ecdp.kernels.ode_coef import solver_table
from ecdp.parametrization import HybridDenoiser
from ecdp.resize import upscale as upscale_bicubic
from ecdp.sampling import SamplerSpec, solve
from ecdp.speed import Speed


def to_image(mu: torch.Tensor, sigma: float, z: torch.Tensor) -> torch.Tensor:
    """x = clamp(mu + sigma z, 0, 1): a residual z in normalized space back to an image in [0, 1]
    (the inverse of eq. 5's z = (x - mu) / sigma); mu and z (B, 3, H, W). A value that is not
    finite stays as it is (clamping would turn infinity into 1), so that a broken model shows."""
    x = mu + sigma * z
    return torch.where(torch.isfinite(x), x.clamp(0, 1), x)


class SuperResolver(nn.Module):
    """An ECDPNet and its model config with one sampler and one Speed: ``run(y, z1) -> (x, nfe)``.

    net: an ``ecdp.nets.ECDPNet`` (``encode(y, hr_size)`` and the denoiser contract
    ``net.denoiser(z_t, t, cond)``), run as ``speed`` says (``ecdp.acceleration.prepare``: the
    reference runs `net` itself, any other speed a copy made here). sampler defaults to the model
    config's (``SamplerSpec.of(config)``); upscale is mu(y), bicubic by default. Raises ValueError
    for CUDA graphs or the fused ODE update with dopri5.
    """

    tiles = True   # any region of an image can be solved alone

    def __init__(self, net: nn.Module, config, sampler: SamplerSpec | None = None, speed: Speed | None = None, *,
                 upscale: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.speed = speed or Speed.reference()
        self.sampler = sampler or SamplerSpec.of(config)
        if self.speed.cuda_graphs or self.speed.fused_ode:
            self.sampler.require_fixed_step("CUDA graphs and the fused ODE update")
        self.net = prepare(net, self.speed)
        self.upscale = upscale or functools.partial(upscale_bicubic, scale=config.scale)
        self.scale, self.sigma, self.lr_multiple = config.scale, config.sigma, config.lr_multiple
        self.model = HybridDenoiser(self.net.denoiser, config.param, config.c)
        self.graphs = GraphedSolve(lambda y, z1, mu: self.run(y, z1, mu, replay=False)[0]) if self.speed.cuda_graphs else None
        self.tables = {}

    @property
    def engine(self) -> str:
        """"reference" or "fast" (``Speed.engine``)."""
        return self.speed.engine

    @property
    def precision(self) -> str:
        """The denoiser's precision ("fp32", "bf16" or "fp16")."""
        return self.speed.precision

    def noise_shape(self, y: torch.Tensor) -> tuple[int, int, int, int]:
        """Shape of the prior sample z1 for an LR batch y."""
        return (y.shape[0], 3, y.shape[-2] * self.scale, y.shape[-1] * self.scale)

    def run(self, y: torch.Tensor, z1: torch.Tensor, mu: torch.Tensor | None = None,
            callback: Callable[[], None] | None = None, replay: bool = True) -> tuple[torch.Tensor, int | None]:
        """(x, nfe) for LR images y (B, 3, h, w) in [0, 1] and prior noise z1 (B, 3, s h, s w).

        mu defaults to upscale(y) (computed here, outside any CUDA graph); a caller that solves
        part of an image passes that part's mu of the whole image. callback as for
        ``ecdp.sampling.solve`` (after a replayed solve: once per step, all at once). With CUDA
        graphs on, a solve on CUDA is replayed from one (replay=False: run eagerly, as captured).
        x (B, 3, s h, s w) in [0, 1], fp32.
        """
        mu = self.upscale(y) if mu is None else mu
        with backends(self.speed):
            if replay and self.graphs is not None and z1.is_cuda:
                x = self.graphs(y, z1, mu)
                for _ in range(self.sampler.steps if callback else 0):
                    callback()
                return x, self.sampler.nfe
            cond = self.net.encode(y, z1.shape[-2:])
            if self.speed.fused_ode:
                z, nfe = fused_solve(self.net.denoiser, z1, cond, self.table(z1), callback), self.sampler.nfe
            else:
                z, nfe = solve(self.model, z1, cond, self.sampler, callback=callback)
        return to_image(mu, self.sigma, z), nfe

    def table(self, z1: torch.Tensor) -> tuple:
        """The fused solve's coefficient table (``ode_coef.solver_table``) on z1's device, times in its dtype."""
        key = (z1.device, z1.dtype)
        if key not in self.tables:
            ts = self.sampler.times(dtype=z1.dtype, device=z1.device)
            stages, t, coef = solver_table(self.sampler.solver, ts.double(), param=self.model.param, c=self.model.c)
            self.tables[key] = stages, t.to(z1.dtype), coef
        return self.tables[key]

    def forward(self, y: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        return self.run(y, z1)[0]
