"""Upscaler: the paper's sampler behind one call for PIL images, uint8 arrays and tensors.

Each image (or each overlapping tile of a large one, ecdp.tiling) is one ``SuperResolver.run``
from the seeded prior noise of its region; the U-Net's size multiple is met by padding.
"""
import threading
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ecdp.bounds import SEED
from ecdp.choices import DEFAULT_ENGINE
from ecdp.devices import checked_device
from ecdp.errors import UserError
from ecdp.images import check_memory, from_array, from_pil, to_array, to_pil
from ecdp.memory import is_out_of_memory, require_memory, size
from ecdp.modelfile import load_model, resolve_model
from ecdp.pipeline import SuperResolver
from ecdp.sampling import SamplerSpec
from ecdp.sde import seeded_prior
from ecdp.speed import Speed
from ecdp.tiling import sample_tiled, tile_grid

MIN_TILE = 8
AUTO_TILE = 256               # LR pixels: the tile of images above AUTO_TILE_ABOVE when no tile is given
AUTO_TILE_ABOVE = 1024 * 1024  # LR pixels
MU_MARGIN = 3                 # LR pixels: beyond the taps of the bicubic upscale (2 on each side)


class Upscaler:
    """Super-resolution with an ECDP model; the same seed gives the same image on the same device.

    Pads and tiles images around one ``resolver.run(y, z1, mu) -> (x, nfe)`` (``ecdp.pipeline.
    SuperResolver``, or anything with its ``run``, ``upscale``, ``scale``, ``lr_multiple``,
    ``tiles``, ``sampler``, ``engine`` and ``precision``), drawing the seeded prior noise of each
    region; each tile is mapped to an image (clamped) before the tiles are blended.
    ``Upscaler.from_model`` and ``from_pretrained`` build the resolver. tile (LR pixels) turns on
    tiled sampling for larger images, with neighbouring tiles overlapping by at least `overlap` LR
    pixels (default tile // 4); without it, images of more than AUTO_TILE_ABOVE LR pixels are
    sampled in tiles of AUTO_TILE; a resolver with ``tiles`` False (one fixed shape) is never
    tiled. device defaults to that of the resolver's parameters (CPU without any). One Upscaler
    may be shared by several threads: calls are serialized. Raises UserError for a bad device
    name, tile or seed (a whole number in ``ecdp.bounds.SEED``).
    """

    def __init__(self, resolver, *, device: torch.device | str | None = None, seed: int = 0,
                 tile: int | None = None, overlap: int | None = None):
        if not isinstance(seed, int) or seed not in SEED:
            raise UserError(f"the seed must be a whole number {SEED}, got {seed!r}")
        self.resolver, self.device, self.seed = resolver, checked_device(device or _parameter_device(resolver)), seed
        self.tile, self.overlap = _tiling(tile, overlap, resolver.lr_multiple)
        self.auto_tile = _tiling(AUTO_TILE, overlap, resolver.lr_multiple)
        self._lock = threading.Lock()
        self.last_nfe = 0

    @classmethod
    def from_model(cls, net: torch.nn.Module, config, *, device: torch.device | str = "cpu", solver: str | None = None,
                   steps: int | None = None, grid: str | None = None, atol: float | None = None,
                   rtol: float | None = None, engine: str = DEFAULT_ENGINE, precision: str = "auto",
                   compile: bool = False, speed: Speed | None = None, **options) -> "Upscaler":
        """The Upscaler of a network and its ModelConfig.

        solver, steps, grid, atol and rtol override the config's sampler (``SamplerSpec.of``).
        engine, precision and compile choose the Speed as every entry point does
        (``ecdp.speed.Speed.choose``): engine "fast" (the default) with precision "auto" (bf16 on
        CUDA and on CPUs with bf16 arithmetic, fp32 elsewhere), "fp32" or "bf16", and compile=True
        for the denoiser through torch.compile; "reference" is the plain method in fp32. speed, when
        given, is used as it is instead. options (seed, tile, overlap) as for Upscaler. Raises
        UserError for a bad sampler, engine, precision or device.
        """
        device = checked_device(device)
        try:
            sampler = SamplerSpec.of(config, solver=solver, steps=steps, grid=grid, atol=atol, rtol=rtol)
            speed = speed or Speed.choose(engine, device, sampler.fixed_step, precision, compile)
            resolver = SuperResolver(net.to(device).eval(), config, sampler, speed)
        except ValueError as e:
            raise UserError(str(e)) from None
        return cls(resolver, device=device, **options)

    @classmethod
    def from_pretrained(cls, path: str, device: torch.device | str = "cpu", **options) -> "Upscaler":
        """The Upscaler of a model folder ("default": the built-in model); options as for from_model."""
        net, config = load_model(resolve_model(path))
        return cls.from_model(net, config, device=device, **options)

    @property
    def sampler(self) -> SamplerSpec | None:
        """The resolver's sampler (None for a TensorRT plan, which does not record it)."""
        return self.resolver.sampler

    @property
    def engine(self) -> str:
        """Which engine runs the solves: "fast", "reference" or "tensorrt"."""
        return self.resolver.engine

    @property
    def scale(self) -> int:
        """The model's scale: HR size over LR size."""
        return self.resolver.scale

    @property
    def precision(self) -> str:
        """The network precision the resolver runs: "fp32" or "bf16" ("as exported" for a TensorRT plan)."""
        return self.resolver.precision

    def upscale(self, image: "Image.Image | np.ndarray | torch.Tensor") -> "Image.Image | np.ndarray | torch.Tensor":
        """Super-resolve a PIL image, an array or a (B,3,h,w) float tensor in [0, 1].

        Arrays are HxW, HxWx3 or HxWx4, of uint8, uint16 or float32/float64 in [0, 1]. Returns the
        same kind: a PIL image of the same mode (upright: its EXIF orientation applied; palette
        images come back as RGB or RGBA), an array of the same layout and dtype, or a
        (B,3,s h,s w) tensor on the input's device and dtype. Raises ValueError for an empty,
        non-finite or out-of-range input, TypeError for anything else, and UserError for a PIL
        image whose decoding and result need more memory than is available (checked before it is
        decoded) and as ``sample`` does.
        """
        if isinstance(image, Image.Image):
            check_memory(image.width, image.height, self.scale)   # before a lazily opened file is decoded
            rgb, alpha, info = from_pil(image)
            return to_pil(self.sample(rgb[None])[0].cpu(), alpha, info)
        if isinstance(image, np.ndarray):
            rgb, alpha, info = from_array(_checked_array(image))
            return to_array(self.sample(rgb[None])[0].cpu(), alpha, info)
        if isinstance(image, torch.Tensor):
            return self.sample(image).to(image.device, image.dtype)
        raise TypeError(f"cannot upscale a {type(image).__name__}; pass a PIL image, a numpy array or a tensor")

    def sample(self, y: torch.Tensor, progress: Callable | None = None, *, seeds: Sequence[int] | None = None
               ) -> torch.Tensor:
        """Super-resolve y (B,3,h,w) in [0, 1]; the network evaluations it took are kept in last_nfe.

        seeds (B ints), when given, give each image its own seed: image i draws the prior noise it
        draws alone in an Upscaler of seed seeds[i], so a batch of images sampled together gets the
        images sampled one by one, up to the float rounding of batched kernels (a fixed-step solver;
        dopri5 chooses its steps for the whole batch). Without it the batch draws its noise from
        the Upscaler's seed.

        progress, when given, is called once as ``progress(total, unit=...)`` and returns a counter
        (``update()``, ``close()``) that is updated after every solver step of every tile: total is
        tiles x steps, or None for dopri5, whose network evaluations are counted instead.
        ``functools.partial(ecdp.console.progress, desc=...)`` is such a callable. A solve replayed
        from a CUDA graph updates it for all its steps at once. Raises ValueError for an empty, non-finite or
        out-of-range y, and UserError when the result alone needs more memory than is available
        (checked before any work), when memory runs out or when the model gives non-finite values.
        """
        _check_tensor(y)
        if seeds is not None and len(seeds) != y.shape[0]:
            raise ValueError(f"expected one seed per image ({y.shape[0]}), got {len(seeds)}")
        s, (h, w) = self.resolver.scale, y.shape[-2:]
        result = y.shape[0] * 3 * s * h * s * w * 4
        require_memory(result, f"the {s * w}x{s * h} result of a {w}x{h} image alone", self.device)
        with self._lock, torch.inference_mode():
            y = y.to(self.device, torch.float32)
            padded = _pad(y, self.resolver.lr_multiple)
            tile, overlap = self._tiles_for(padded)
            counter = self._counter(progress, padded, tile, overlap)
            callback = None if counter is None else counter.update   # a tqdm without a total has no truth value
            try:
                if tile:
                    solve = lambda *region: self.resolver.run(*self._region(y, padded, *region, seeds), callback)
                    x, self.last_nfe = sample_tiled(solve, padded.shape[-2:], s, tile, overlap)
                else:
                    x, self.last_nfe = self.resolver.run(*self._region(y, padded, 0, 0, *padded.shape[-2:], seeds),
                                                         callback)
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if not is_out_of_memory(e):
                    raise
                raise UserError(f"out of memory on {self.device} for a {w}x{h} image (its result alone takes "
                                f"{size(result)}); {_tile_advice(tile)}") from None
            finally:
                if counter is not None:
                    counter.close()
            x = x[..., : s * h, : s * w]
            if not torch.isfinite(x).all():
                raise UserError("the model gave non-finite values (NaN or infinity); its weights or config "
                                "are broken")
            return x

    def _tiles_for(self, y):
        """(tile, overlap) for the padded LR batch y, or (None, None) to solve it whole."""
        if not self.resolver.tiles:
            return None, None
        if self.tile:
            return (self.tile, self.overlap) if max(y.shape[-2:]) > self.tile else (None, None)
        if y.shape[-2] * y.shape[-1] > AUTO_TILE_ABOVE:
            return self.auto_tile
        return None, None

    def _counter(self, progress, padded, tile, overlap):
        """The progress counter of one sample call (see sample), or None."""
        if progress is None:
            return None
        if self.sampler is None or not self.sampler.fixed_step:   # None: a resolver that does not say
            return progress(None, unit="network evaluation")
        tiles = len(tile_grid(*padded.shape[-2:], tile, overlap)) if tile else 1
        return progress(tiles * self.sampler.steps, unit="step")

    def _region(self, y, padded, top, left, height, width, seeds=None):
        """resolver.run's (y, z1, mu) for one LR region of the padded batch: the prior noise of that
        region alone (eq. 12, ``ecdp.sde.seeded_prior``; each image's own with `seeds`) and the whole
        image's mu there (None: the region is the image)."""
        s = self.resolver.scale
        shape = (padded.shape[0], 3, s * padded.shape[-2], s * padded.shape[-1])
        hr_region = (s * top, s * left, s * height, s * width)
        if seeds is None:
            z1 = seeded_prior(self.seed, shape, hr_region, device=self.device)
        else:
            z1 = torch.cat([seeded_prior(seed, (1, *shape[1:]), hr_region, device=self.device) for seed in seeds])
        region = padded[..., top:top + height, left:left + width]
        whole = (top, left, height, width) == (0, 0, *y.shape[-2:])   # then mu of the region is the image's
        mu = None if whole else _region_upscale(self.resolver.upscale, y, top, left, height, width, s)
        return region, z1, mu


def _region_upscale(upscale, y, top, left, height, width, scale):
    """mu = upscale(y) on an LR region, from a window MU_MARGIN pixels wider (the same values as the
    whole upscale there); zero where the region reaches past y into the padding."""
    rows = slice(max(top - MU_MARGIN, 0), min(top + height + MU_MARGIN, y.shape[-2]))
    cols = slice(max(left - MU_MARGIN, 0), min(left + width + MU_MARGIN, y.shape[-1]))
    mu = upscale(y[..., rows, cols])
    r0, c0 = scale * (top - rows.start), scale * (left - cols.start)
    mu = mu[..., r0:r0 + scale * height, c0:c0 + scale * width]
    return F.pad(mu, (0, scale * width - mu.shape[-1], 0, scale * height - mu.shape[-2]))


def _tile_advice(tile):
    if tile:
        return f"pass a smaller tile than {tile} LR pixels (--tile PX) or a smaller image"
    return "sample it in tiles (--tile PX, e.g. --tile 128) to bound memory"


def _parameter_device(resolver):
    """The device of the resolver's first parameter; the CPU for one without parameters."""
    parameters = resolver.parameters() if isinstance(resolver, torch.nn.Module) else ()
    return next((p.device for p in parameters), "cpu")


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
    """`array` if it is an image array Upscaler.upscale takes (see there), else a ValueError naming the problem."""
    layout = array.ndim == 2 or array.ndim == 3 and array.shape[-1] in (3, 4)
    if not layout or array.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 array of uint8, uint16 or float in [0, 1], "
                         f"got shape {array.shape} of {array.dtype}")
    if array.size == 0:
        raise ValueError(f"the array is empty (shape {array.shape})")
    if array.dtype.kind == "f":
        _check_values(torch.from_numpy(array), "array")
    return array


def _check_tensor(y):
    """ValueError unless y is a non-empty (B, 3, h, w) float tensor of finite values in [0, 1]."""
    if y.dim() != 4 or y.shape[1] != 3 or not y.is_floating_point():
        raise ValueError(f"expected a float tensor of shape (B, 3, h, w), got {tuple(y.shape)} of {y.dtype}")
    if y.numel() == 0:
        raise ValueError(f"the tensor is empty (shape {tuple(y.shape)})")
    _check_values(y, "tensor")


def _check_values(values, kind):
    """ValueError unless every value is finite and in [0, 1]."""
    finite = torch.isfinite(values)
    if not finite.all():
        raise ValueError(f"the {kind} holds {int((~finite).sum())} non-finite values (NaN or infinity)")
    low, high = values.min().item(), values.max().item()
    if low < 0 or high > 1:
        hint = " (divide 0..255 values by 255)" if high > 1.5 else ""
        raise ValueError(f"the {kind}'s values must lie in [0, 1], found {low:g} to {high:g}{hint}")
