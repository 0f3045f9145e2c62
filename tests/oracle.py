"""The Gaussian oracle of docs/design.md section 1: z_0 ~ N(m, v) per pixel has a closed-form denoiser."""
import torch

from ecdp.sde import alpha


class GaussianOracle:
    """Exact (E[eps | z_t], E[z_0 | z_t]) for z_0 ~ N(m, v); its flow keeps xi(z_t, t) constant."""

    def __init__(self, m=0.3, v=0.5):
        self.m, self.v = m, v

    def __call__(self, z, t, cond=None):
        a = alpha(t).reshape(-1, *([1] * (z.dim() - 1)))
        z0 = self.m + a.sqrt() * self.v * (z - a.sqrt() * self.m) / (a * self.v + 1 - a)
        eps = (z - a.sqrt() * z0) / (1 - a).sqrt()
        return eps, z0

    def _scale(self, t):
        a = alpha(torch.as_tensor(t, dtype=torch.float64))
        return a.sqrt(), (a * self.v + 1 - a).sqrt()

    def exact_map(self, z1, t_end):
        """The exact probability-flow map from t = 1 to t_end: xi stays constant."""
        s1, r1 = self._scale(1.0)
        se, re = self._scale(t_end)
        xi = (z1 - s1 * self.m) / r1
        return re * xi + se * self.m
