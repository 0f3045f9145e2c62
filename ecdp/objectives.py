"""What each training stage minimizes, as modules ``forward(y, x, generator) -> loss`` that DDP wraps.

- ``RegressionLoss``: the encoder stage, L1 between x and the ``Regressor``'s mu(y) + head(encoder(y)).
- ``DiffusionLoss``: the score and quality stages, score matching (eq. 16) plus weight * the
  quality loss (eq. 19), in z = (x - mu) / sigma (the loss functions are ecdp.losses').
"""
import torch
import torch.nn.functional as F
from torch import nn

from ecdp.losses import quality_loss, score_matching_loss
from ecdp.nets import RRDBEncoder
from ecdp.resize import resize_matrix


class BicubicUp:
    """mu(y) = up(y) (ecdp.resize.upscale) in float32, also under autocast: in bf16 its rounding (about
    2e-3) would be a visible error in z0 = (x - mu) / sigma. Its resize matrices are made once per size
    and device, so the training step copies nothing from the host (on CUDA such a copy waits for
    the GPU)."""

    def __init__(self, scale):
        self.scale, self.matrices = scale, {}

    def __call__(self, y):
        with torch.autocast(y.device.type, enabled=False):
            y = y.float()
            a_h, a_w = (self._matrix(n, y.device) for n in y.shape[-2:])
            return a_h @ y @ a_w.T

    @torch.compiler.disable   # under torch.compile too, the cached matrix enters the graph as an input
    def _matrix(self, size, device):
        key = (size, device)
        if key not in self.matrices:
            self.matrices[key] = resize_matrix(size, size * self.scale, device=device)
        return self.matrices[key]


class Regressor(nn.Module):
    """The encoder-stage network: x ~ mu(y) + head(encoder(y)); the head upsamples by pixel shuffle."""

    def __init__(self, cfg, scale):
        super().__init__()
        self.up = BicubicUp(scale)
        self.encoder = RRDBEncoder(cfg)
        self.head = nn.Sequential(nn.Conv2d(cfg.cond_channels, cfg.enc_nf * scale**2, 3, padding=1),
                                  nn.PixelShuffle(scale), nn.LeakyReLU(0.2),
                                  nn.Conv2d(cfg.enc_nf, 3, 3, padding=1))

    def forward(self, y):
        return self.up(y) + self.head(self.encoder(y))


class RegressionLoss(nn.Module):
    """L1 between the regressor's output and x."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, y, x, generator):
        return F.l1_loss(self.net(y), x)


class DiffusionLoss(nn.Module):
    """Score matching (eq. 16) in z = (x - mu) / sigma, plus weight * quality loss (eq. 19) when a
    feature map is given. DDP wraps this module, so its hooks see every use of the network."""

    def __init__(self, net, *, scale, sigma, t_eps, feature=None, weight=0.0, quality_options=None,
                 batch_slice=(0, 1)):
        super().__init__()
        self.net, self.feature, self.up = net, feature, BicubicUp(scale)
        self.sigma, self.t_eps, self.batch_slice = sigma, t_eps, batch_slice
        self.weight, self.quality_options = weight, quality_options or {}

    def forward(self, y, x, generator):
        mu = self.up(y)
        cond = self.net.encode(y, x.shape[-2:])
        loss = score_matching_loss(self.net, (x - mu) / self.sigma, cond, t_eps=self.t_eps, generator=generator,
                                   batch_slice=self.batch_slice)
        if self.feature is None:
            return loss
        quality = quality_loss(self.net, y, x, mu, self.sigma, cond, self.feature, generator=generator,
                               batch_slice=self.batch_slice, **self.quality_options)
        return loss + self.weight * quality
