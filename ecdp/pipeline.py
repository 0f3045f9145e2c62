"""The whole super-resolution map (y, z1) -> x: encoder, mu(y), probability-flow solve, output.

``x = clamp(mu(y) + sigma * z(t_end), 0, 1)`` where z solves eq. 13 from the prior sample z1 (eq. 12).
One module serves the Python API, the exporters and the fast engines.
"""
from torch import nn

from ecdp.parametrization import HybridDenoiser
from ecdp.resize import upscale as upscale_bicubic
from ecdp.sampling import solve


class SuperResolver(nn.Module):
    """Wrap a network and its model config with fixed sampler settings."""

    def __init__(self, net, config, *, solver=None, steps=None, grid=None, atol=1e-3, rtol=1e-3, t_end=1e-3,
                 upscale=None):
        super().__init__()
        self.net = net
        self.upscale = upscale or (lambda y: upscale_bicubic(y, config.scale))
        self.scale, self.sigma, self.param, self.c = config.scale, config.sigma, config.param, config.c
        self.model = HybridDenoiser(net, config.param, config.c)
        self.solver = solver or config.solver
        self.steps = steps or config.steps
        self.grid = grid or config.grid
        self.atol, self.rtol, self.t_end = atol, rtol, t_end

    def noise_shape(self, y):
        """Shape of the prior sample z1 for an LR batch y."""
        return (y.shape[0], 3, y.shape[-2] * self.scale, y.shape[-1] * self.scale)

    def latent(self, y, z1, callback=None):
        """(z(t_end), nfe): the probability-flow solve from z1, conditioned on y's encoder features;
        callback as for ``ecdp.sampling.solve``."""
        return solve(self.model, z1, self.net.encode(y), solver=self.solver, steps=self.steps, grid=self.grid,
                     atol=self.atol, rtol=self.rtol, t_end=self.t_end, callback=callback)

    def image(self, y, z):
        """x = clamp(mu(y) + sigma z, 0, 1)."""
        return (self.upscale(y) + self.sigma * z).clamp(0, 1)

    def run(self, y, z1):
        """Return (x, nfe) for LR images y (B, 3, h, w) in [0, 1] and prior noise z1."""
        z, nfe = self.latent(y, z1)
        return self.image(y, z), nfe

    def forward(self, y, z1):
        return self.run(y, z1)[0]
