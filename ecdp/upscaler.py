"""Upscaler: the paper's sampler behind one call for PIL images, uint8 arrays and tensors.

x = clamp(mu + sigma z, 0, 1) with mu = up(y) (eq. 5) and z the probability-flow ODE solution
(eq. 13) from seeded prior noise z(1) ~ N(0, I) (eq. 12), conditioned on the encoder features of y.
"""
import math
import threading

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ecdp.errors import UserError
from ecdp.images import from_pil, to_pil
from ecdp.engine import fast_resolver, graphed_latent
from ecdp.modelfile import load_model, resolve_model
from ecdp.pipeline import SuperResolver
from ecdp.resize import upscale
from ecdp.sampling import SOLVERS
from ecdp.sde import prior_sample
from ecdp.tiling import sample_tiled

GRIDS = ("uniform", "logsnr")
MIN_TILE = 8


ENGINES = ("reference", "fast")


class Upscaler:
    """Super-resolution with an ECDP model; the same seed gives the same image on the same device.

    solver, steps and grid default to the model config's; atol and rtol are dopri5's tolerances;
    tile (LR pixels) turns on tiled sampling for larger images, with neighbouring tiles overlapping
    by at least `overlap` LR pixels (default tile // 4). engine "fast" caches the conditioning,
    runs the network in bf16 on CUDA and replays fixed-step solves from CUDA graphs; "reference" is
    the plain method. compile=True runs the fast engine's cached denoiser through torch.compile.
    One Upscaler may be shared by several threads: calls are serialized.
    """

    def __init__(self, net, config, *, device="cpu", solver=None, steps=None, seed=0, grid=None,
                 tile=None, overlap=None, atol=1e-3, rtol=1e-3, engine="reference", compile=False):
        self.device = _device(device)
        self.net = net.to(self.device).eval()
        self.config = config
        self.solver = solver or config.solver
        self.steps = config.steps if steps is None else steps
        self.grid = grid or config.grid
        _check_sampler(self.solver, self.steps, self.grid)
        self.seed, self.atol, self.rtol = seed, atol, rtol
        unet_multiple = 2 ** (len(config.net.ch_mult) - 1)
        self.multiple = unet_multiple // math.gcd(unet_multiple, config.scale)
        self.tile, self.overlap = _tiling(tile, overlap, self.multiple)
        self._latent = self._engine(engine, compile)
        self._lock = threading.Lock()
        self.last_nfe = 0

    def _engine(self, engine, compile=False):
        """The latent solve (y, z1) -> (z, nfe) of the chosen engine."""
        sampler = dict(solver=self.solver, steps=self.steps, grid=self.grid, atol=self.atol, rtol=self.rtol)
        if engine == "reference":
            if compile:
                raise UserError("compile=True needs engine='fast'")
            return SuperResolver(self.net, self.config, **sampler).latent
        if engine != "fast":
            raise UserError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        on_gpu = self.device.type == "cuda"
        resolver = fast_resolver(self.net, self.config, dtype=torch.bfloat16 if on_gpu else None,
                                 compile_mode="default" if compile else None, **sampler)
        return graphed_latent(resolver) if on_gpu and self.solver != "dopri5" else resolver.latent

    @classmethod
    def from_pretrained(cls, path, device="cpu", **options):
        """The Upscaler of a model folder ("default": the built-in model); options as for Upscaler."""
        net, config = load_model(resolve_model(path))
        return cls(net, config, device=device, **options)

    def upscale(self, image):
        """Super-resolve a PIL image, an HxW / HxWx3 / HxWx4 uint8 array or a (B,3,h,w) float tensor in [0, 1].

        Returns the same kind: a PIL image of the same mode (palette images come back as RGB or RGBA),
        an array of the same layout, or a (B,3,s h,s w) tensor on the input's device and dtype.
        """
        if isinstance(image, Image.Image):
            rgb, alpha, info = from_pil(image)
            return to_pil(self.sample(rgb[None])[0].cpu(), alpha, info)
        if isinstance(image, np.ndarray):
            return np.array(self.upscale(Image.fromarray(_checked_array(image))))
        if isinstance(image, torch.Tensor):
            return self.sample(_checked_tensor(image)).to(image.device, image.dtype)
        raise TypeError(f"cannot upscale a {type(image).__name__}; pass a PIL image, a numpy array or a tensor")

    def sample(self, y):
        """Super-resolve y (B,3,h,w) in [0, 1]; the network evaluations it took are kept in last_nfe."""
        with self._lock, torch.inference_mode():
            y = y.to(self.device, torch.float32)
            s, (h, w) = self.config.scale, y.shape[-2:]
            padded = _pad(y, self.multiple)
            z1 = self._prior(padded)
            if self.tile and max(padded.shape[-2:]) > self.tile:
                z, self.last_nfe = sample_tiled(self._latent, padded, z1, s, self.tile, self.overlap)
            else:
                z, self.last_nfe = self._latent(padded, z1)
            return (upscale(y, s) + self.config.sigma * z[..., : s * h, : s * w]).clamp(0, 1)

    def _prior(self, y):
        """Seeded prior noise at the HR size of y, drawn on the CPU and moved to the device."""
        s = self.config.scale
        shape = (y.shape[0], 3, s * y.shape[-2], s * y.shape[-1])
        return prior_sample(shape, generator=torch.Generator().manual_seed(self.seed)).to(self.device)


def _device(name):
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{name!r} is not a device name (try cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name} is not available: no CUDA GPU was found")
    return device


def _check_sampler(solver, steps, grid):
    if solver not in SOLVERS:
        raise UserError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if grid not in GRIDS:
        raise UserError(f"unknown time grid {grid!r}; choose one of {', '.join(GRIDS)}")
    if solver != "dopri5" and steps < 1:
        raise UserError(f"solver {solver} needs at least one step, got {steps}")


def _tiling(tile, overlap, multiple):
    """(tile rounded down to a multiple the U-Net accepts, overlap defaulting to tile // 4), checked."""
    if tile is None:
        return None, None
    size, smallest = tile - tile % multiple, max(MIN_TILE, multiple)
    if size < smallest:
        raise UserError(f"tile size {tile} is too small; use at least {smallest} LR pixels")
    overlap = size // 4 if overlap is None else overlap
    if not 0 <= overlap <= size // 2:
        raise UserError(f"tile overlap {overlap} must lie between 0 and half the tile ({size // 2} LR pixels)")
    return size, overlap


def _pad(y, multiple):
    """y padded at the bottom and right (reflect; replicate when too small) to multiples of `multiple`."""
    ph, pw = -y.shape[-2] % multiple, -y.shape[-1] % multiple
    if not (ph or pw):
        return y
    mode = "reflect" if ph < y.shape[-2] and pw < y.shape[-1] else "replicate"
    return F.pad(y, (0, pw, 0, ph), mode=mode)


def _checked_array(array):
    if not (array.dtype == np.uint8 and (array.ndim == 2 or array.ndim == 3 and array.shape[-1] in (3, 4))
            or array.dtype == np.uint16 and array.ndim == 2):
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 uint8 array (or HxW uint16), "
                         f"got shape {array.shape} of {array.dtype}")
    return array


def _checked_tensor(y):
    if y.dim() != 4 or y.shape[1] != 3 or not y.is_floating_point():
        raise ValueError(f"expected a float tensor of shape (B, 3, h, w), got {tuple(y.shape)} of {y.dtype}")
    return y
