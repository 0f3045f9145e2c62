"""The model side of the service: one model folder, an Upscaler per sampler, batches of same-size images.

Every call happens on one thread (the service's model thread), so one solve runs at a time.
"""
import dataclasses
import functools
from dataclasses import dataclass
from typing import Hashable

import torch

from ecdp.choices import DEFAULT_ENGINE
from ecdp.errors import UserError
from ecdp.sampling import SamplerSpec
from ecdp.upscaler import AUTO_TILE_ABOVE, Upscaler

SAMPLERS_KEPT = 4     # Upscalers of request-chosen samplers kept built (each holds a copy of the network on the CPU)
WARMUP_SIZE = 16      # LR pixels: the side of the images the warm-up solves


@dataclass(eq=False)
class Work:
    """One image to upscale: rgb (3,h,w) float32 in [0, 1], its seed and its sampler."""

    rgb: torch.Tensor
    seed: int
    sampler: SamplerSpec


class Models:
    """Upscalers of the model folder `checkpoint` ("default": the built-in model) on `device`, one per
    sampler, built with ``Upscaler.from_pretrained`` and the Speed's options given."""

    def __init__(self, checkpoint: str, *, device: str, engine: str = DEFAULT_ENGINE, precision: str = "auto",
                 compile: bool = False):
        self.checkpoint, self.device = checkpoint, device
        self.options = {"engine": engine, "precision": precision, "compile": compile}
        self.upscaler = functools.lru_cache(maxsize=SAMPLERS_KEPT)(self._build)
        self.default: Upscaler | None = None

    def load(self, batch_sizes: tuple[int, ...] = ()) -> None:
        """Build the Upscaler of the model's own sampler and run one solve at each batch size (on CUDA
        this captures their graphs at the warm-up size). Raises UserError for a bad model or option."""
        self.default = Upscaler.from_pretrained(self.checkpoint, device=self.device, **self.options)
        self.upscaler.cache_clear()
        size = -(-WARMUP_SIZE // self.default.resolver.lr_multiple) * self.default.resolver.lr_multiple
        for n in sorted(set(batch_sizes)):
            self.default.sample(torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)),
                                seeds=range(n))

    def sampler(self, solver: str | None, steps: int | None, grid: str | None) -> SamplerSpec:
        """The model's sampler with the overrides that are not None; raises UserError for a bad one."""
        overrides = {k: v for k, v in (("solver", solver), ("steps", steps), ("grid", grid)) if v is not None}
        try:
            return dataclasses.replace(self.default.sampler, **overrides)
        except ValueError as e:
            raise UserError(str(e)) from None

    def key(self, work: Work) -> Hashable:
        """Works of equal keys may share a batch: same LR size and sampler, and a fixed-step solver
        (dopri5 chooses its steps for the whole batch, so each of its images runs alone)."""
        alone = None if work.sampler.fixed_step else object()
        return (*work.rgb.shape[-2:], work.sampler, alone)

    def capacity(self, key: Hashable) -> int:
        """The most images of this key in one batch: as many LR pixels as the largest untiled image
        (an image that is sampled in tiles runs alone)."""
        height, width = key[:2]
        return max(1, AUTO_TILE_ABOVE // (height * width))

    def run(self, works: list[Work]) -> list[torch.Tensor]:
        """The upscaled images (3, s h, s w) float32 in [0, 1] on the CPU of works of one key, each
        with its own seed. Raises UserError when memory runs out or the model gives non-finite values."""
        upscaler = self.upscaler(works[0].sampler)
        y = torch.stack([work.rgb for work in works])
        return list(upscaler.sample(y, seeds=[work.seed for work in works]).cpu())

    def _build(self, sampler: SamplerSpec) -> Upscaler:
        if sampler == self.default.sampler:
            return self.default
        return Upscaler.from_pretrained(self.checkpoint, device=self.device, solver=sampler.solver,
                                        steps=sampler.steps, grid=sampler.grid, **self.options)
