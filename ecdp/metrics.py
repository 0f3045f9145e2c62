"""Image quality metrics with the conventions of docs/design.md section 3.

Inputs are (3, H, W) or (B, 3, H, W) float tensors in [0, 1], already quantized to 8 bits by the
caller (``quantize``); each metric returns one value per image (shape ``a.shape[:-3]``).

- RGB: computed on [0, 1] (data range 1), no border crop unless asked.
- Y: BT.601 luma as MATLAB's rgb2ycbcr, ``16 + 65.481 R + 128.553 G + 24.966 B`` on a 0..255 scale
  (unrounded); PSNR and SSIM on Y use data range 255.
- SSIM: Wang et al.'s 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, population
  covariances, averaged over the window positions inside the image and over channels; equal to
  scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)``.
- LPIPS (AlexNet, v0.1) only from local weights: see ``lpips``.
"""
import functools
import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from ecdp.errors import UserError
from ecdp.resize import downscale

Y_WEIGHTS = (65.481, 128.553, 24.966)
SSIM_SIGMA, SSIM_RADIUS, SSIM_K1, SSIM_K2 = 1.5, 5, 0.01, 0.03
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
LPIPS_HEAD_FILE = "alex.pth"
LPIPS_ENV = "ECDP_LPIPS_WEIGHTS"


def quantize(x):
    """Round to 8-bit levels like an image written to disk: clamp to [0, 1], round to k / 255."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def rgb_to_y(x):
    """BT.601 luma (..., 1, H, W) on a 0..255 scale of RGB (..., 3, H, W) in [0, 1]."""
    w = torch.tensor(Y_WEIGHTS, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return 16 + (x * w).sum(dim=-3, keepdim=True)


def psnr(a, b, *, crop=0, y_channel=False):
    """Peak signal-to-noise ratio in dB (data range 1 on RGB, 255 on Y); inf for equal images."""
    a, b, peak = _prepare(a, b, crop, y_channel)
    mse = ((a - b) ** 2).mean(dim=(-3, -2, -1))
    return 10 * torch.log10(peak**2 / mse)


def ssim(a, b, *, crop=0, y_channel=False):
    """Structural similarity (Wang et al. 2004), mean over window positions and channels."""
    a, b, peak = _prepare(a, b, crop, y_channel)
    if min(a.shape[-2:]) < 2 * SSIM_RADIUS + 1:
        raise ValueError(f"SSIM needs images of at least {2 * SSIM_RADIUS + 1} pixels a side, "
                         f"got {tuple(a.shape[-2:])}.")
    c1, c2 = (SSIM_K1 * peak) ** 2, (SSIM_K2 * peak) ** 2
    mx, my, xx, yy, xy = _gaussian_filter(torch.stack([a, b, a * a, b * b, a * b]))
    vx, vy, cxy = xx - mx**2, yy - my**2, xy - mx * my
    s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.reshape(*a.shape[:-3], -1).mean(dim=-1)


def lr_psnr(sr, lr, scale):
    """PSNR (RGB) between the downscaled SR image and the LR input, both quantized: consistency."""
    return psnr(quantize(downscale(sr, scale)), quantize(lr))


def _prepare(a, b, crop, y_channel):
    """Float64 copies, optionally as Y, with ``crop`` pixels cut from each border; and the peak."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} and {tuple(b.shape)}.")
    if a.dim() not in (3, 4) or a.shape[-3] != 3:
        raise ValueError(f"expected (3, H, W) or (B, 3, H, W) images, got {tuple(a.shape)}.")
    a, b = a.double(), b.double()
    if y_channel:
        a, b = rgb_to_y(a), rgb_to_y(b)
    if crop:
        a, b = a[..., crop:-crop, crop:-crop], b[..., crop:-crop, crop:-crop]
    return a, b, 255.0 if y_channel else 1.0


def _gaussian_filter(x):
    """x (..., H, W) filtered by the 11x11 Gaussian window at the valid positions: G_H^T x G_W."""
    return _window_matrix(x.shape[-2], x).T @ x @ _window_matrix(x.shape[-1], x)


def _window_matrix(n, like):
    """(n, n - 10) matrix whose column j holds the 1-D Gaussian window on entries j..j+10."""
    r = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=like.dtype, device=like.device)
    g = torch.exp(-(r**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    offset = torch.arange(n, device=like.device)[:, None] - torch.arange(n - 2 * SSIM_RADIUS, device=like.device)
    inside = (offset >= 0) & (offset <= 2 * SSIM_RADIUS)
    return torch.where(inside, g[offset.clamp(0, 2 * SSIM_RADIUS)], 0)


class LpipsUnavailable(UserError):
    """LPIPS weights are not on this machine (or not readable); the message says why."""


def lpips(a, b, weights=None):
    """LPIPS distance (AlexNet, v0.1) of images in [0, 1]; raises LpipsUnavailable without weights.

    ``weights`` (else ``$ECDP_LPIPS_WEIGHTS``) is a folder holding torchvision's ImageNet AlexNet
    ``alexnet-owt-7be5be79.pth`` and the LPIPS v0.1 linear head ``alex.pth``. Without either, both
    files are looked for in the torch hub cache (``<torch.hub.get_dir()>/checkpoints``) and the head
    also in an installed ``lpips`` package (``lpips/weights/v0.1``). Files are read with
    ``torch.load(weights_only=True)``: tensors only, no code is unpickled.
    """
    net = _lpips_net(*_lpips_files(weights)).to(a.device)
    single = a.dim() == 3
    d = net(a.reshape(-1, *a.shape[-3:]).float(), b.reshape(-1, *b.shape[-3:]).float())
    return d[0] if single else d


def lpips_available(weights=None):
    """(True, "") when LPIPS can run with the local weights, else (False, the reason)."""
    try:
        _lpips_net(*_lpips_files(weights))
    except LpipsUnavailable as e:
        return False, str(e)
    return True, ""


def _lpips_files(weights):
    folder = weights or os.environ.get(LPIPS_ENV)
    if folder:
        folders = [Path(folder)]
    else:
        package = importlib.util.find_spec("lpips")
        lpips_dirs = [Path(package.origin).parent / "weights" / "v0.1"] if package and package.origin else []
        folders = [Path(torch.hub.get_dir()) / "checkpoints", *lpips_dirs]
    return _find(ALEXNET_FILE, folders), _find(LPIPS_HEAD_FILE, folders)


def _find(name, folders):
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    raise LpipsUnavailable(f"no LPIPS weights: {name} is not in {' or '.join(map(str, folders))} "
                           f"(set {LPIPS_ENV} to a folder with {ALEXNET_FILE} and {LPIPS_HEAD_FILE}).")


@functools.lru_cache(maxsize=2)
def _lpips_net(backbone_path, head_path):
    backbone = _read_state(backbone_path)
    head = _read_state(head_path)
    state = {k: v for k, v in backbone.items() if k.startswith("features.")}
    state.update({k.replace("lin", "lins.", 1).replace(".model.1", ""): v for k, v in head.items()})
    net = _Lpips()
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        raise LpipsUnavailable(f"{backbone_path} and {head_path} are not AlexNet LPIPS weights ({e}).") from None
    return net.eval().requires_grad_(False)


def _read_state(path):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable or foreign file: torch.load raises many kinds
        raise LpipsUnavailable(f"{path} is not a readable weights file ({e}).") from None
    if not isinstance(state, dict):
        raise LpipsUnavailable(f"{path} does not hold a state dict.")
    return state


class _Lpips(nn.Module):
    """torchvision's AlexNet features with LPIPS v0.1's input scaling and linear head."""

    TAPS = (1, 4, 7, 9, 11)  # the five ReLU outputs

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU())
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in (64, 192, 384, 256, 256))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)

    def taps(self, x):
        """Unit-normalized (over channels) features at the five taps of x in [0, 1]."""
        x = (2 * x - 1 - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.TAPS:
                out.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, a, b):
        layers = zip(self.lins, self.taps(a), self.taps(b))
        return sum(lin((fa - fb) ** 2).mean(dim=(1, 2, 3)) for lin, fa, fb in layers)
