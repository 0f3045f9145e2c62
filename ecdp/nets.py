"""ECDP networks: a BigGAN-style U-Net denoiser conditioned on an RRDB encoder of the LR image.

Paper preset (docs/design.md section 2), 42,587,846 parameters:

- U-Net, 26,039,302: input conv 3->64; levels of 64, 128, 256, 256 channels with 2 residual blocks
  down and 3 up; a stride-2 downsample after every level but the last (3 downsamples, 3 upsamples);
  2 middle blocks; every residual block has its own time projection Linear(512 -> C) and its own
  conditioning projection Conv1x1(256 -> C), and a 1x1 skip conv only when channels change;
  time MLP 128 -> 512 -> 512; head GroupNorm(16) -> SiLU -> conv 64 -> 6.
- Encoder, 16,548,544: conv 3->64 and 23 RRDB blocks (nf 64, gc 32), no trunk conv.
"""
import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ecdp.kernels import reference


@dataclass(frozen=True)
class NetConfig:
    """Sizes of the denoiser U-Net and of the RRDB LR encoder."""

    ch: int = 64
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    emb_dim: int = 512
    time_freqs: int = 128
    time_scale: float = 300.0
    head_groups: int = 16
    enc_nf: int = 64
    enc_gc: int = 32
    enc_blocks: int = 23
    enc_taps: tuple[int, ...] = (1, 8, 15, 22)

    @property
    def cond_channels(self) -> int:
        return self.enc_nf * len(self.enc_taps)

    @property
    def size_multiple(self) -> int:
        """What the U-Net's HR height and width must be multiples of: 2 per downsample."""
        return 2 ** (len(self.ch_mult) - 1)


PRESETS = {
    "paper": NetConfig(),
    "small": NetConfig(ch=32, num_res_blocks=1, emb_dim=256, enc_nf=32, enc_gc=16, enc_blocks=8,
                       enc_taps=(2, 4, 6, 8)),
    "tiny": NetConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, emb_dim=128, time_freqs=64,
                      enc_nf=32, enc_gc=16, enc_blocks=4, enc_taps=(1, 2, 3, 4)),
}


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of `module`."""
    return sum(p.numel() for p in module.parameters())


class GroupNormSiLU(nn.GroupNorm):
    """SiLU(GroupNorm(x + add_channel[:, :, None, None] + add)), statistics in fp32: the norm of every
    block and of the head. ``impl`` computes it (``ecdp.kernels.reference.group_norm_silu``; a
    prepared network may put a fused kernel with the same signature in its place)."""

    impl = staticmethod(reference.group_norm_silu)

    def forward(self, x: torch.Tensor, add_channel: torch.Tensor | None = None,
                add: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W); add_channel (B, C); add x's shape. Returns x's shape and dtype."""
        return self.impl(x, self.weight, self.bias, self.num_groups, add_channel=add_channel, add=add, eps=self.eps)


def norm(channels: int) -> GroupNormSiLU:
    """GroupNorm + SiLU with min(C // 4, 32) groups."""
    return GroupNormSiLU(min(channels // 4, 32), channels)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim): [cos, sin] over geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """GN-SiLU-conv1, + time + cond, GN-SiLU-conv2 (zero init), plus skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, cond_ch: int):
        super().__init__()
        self.norm1 = norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Linear(emb_dim, out_ch)
        self.cond_proj = nn.Conv2d(cond_ch, out_ch, 1)
        self.norm2 = norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def cond(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Encoder features projected to this block's channels and resized (bilinear) to `size`.

        The paper resizes the features and then projects them; both maps are linear and the
        bilinear weights sum to one, so projecting first, at LR resolution (cheaper), gives the
        same result up to rounding (docs/design.md).
        """
        return F.interpolate(self.cond_proj(features), size=size, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """`cond` is this block's projected conditioning at the block's resolution."""
        h = self.conv1(self.norm1(x))
        h = self.norm2(h, add_channel=self.time_proj(emb), add=cond)
        return self.skip(x) + self.conv2(h)


class Upsample(nn.Sequential):
    """Nearest x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, channels, 3, padding=1))


class UNet(nn.Module):
    """Denoiser D(z_t, t, cond) -> (eps_hat, z0_hat), each (B, 3, H, W)."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.time_freqs, self.time_scale, self.size_multiple = cfg.time_freqs, cfg.time_scale, cfg.size_multiple
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_freqs, cfg.emb_dim), nn.SiLU(),
                                      nn.Linear(cfg.emb_dim, cfg.emb_dim), nn.SiLU())
        block = partial(ResBlock, emb_dim=cfg.emb_dim, cond_ch=cfg.cond_channels)
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(3, cfg.ch, 3, padding=1)

        skips, c = [cfg.ch], cfg.ch
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for level, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(block(c, width))
                c = width
                skips.append(c)
            self.down.append(blocks)
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)

        self.middle = nn.ModuleList([block(c, c), block(c, c)])

        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(block(c + skips.pop(), width))
                c = width
            self.up.append(blocks)
            if level > 0:
                self.upsample.append(Upsample(c))

        self.head_norm = GroupNormSiLU(cfg.head_groups, c)
        self.head_conv = nn.Conv2d(c, 6, 3, padding=1)

    def blocks_with_sizes(self, hr_size: tuple[int, int]):
        """Every residual block in forward order, with the resolution it runs at."""
        h, w = hr_size
        size = lambda level: (h // 2**level, w // 2**level)
        for level, blocks in enumerate(self.down):
            yield from ((blk, size(level)) for blk in blocks)
        yield from ((blk, size(len(self.down) - 1)) for blk in self.middle)
        for level, blocks in zip(reversed(range(len(self.up))), self.up):
            yield from ((blk, size(level)) for blk in blocks)

    def block_conditioning(self, features: torch.Tensor, hr_size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        """Each block's projected conditioning (ResBlock.cond), computed once per image (valid for every t)."""
        return tuple(blk.cond(features, size) for blk, size in self.blocks_with_sizes(hr_size))

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond: tuple[torch.Tensor, ...]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """z_t (B, 3, H, W) at times t (B,); cond the block_conditioning of the image at (H, W).

        Raises ValueError when H or W is not a multiple of the config's size_multiple.
        """
        multiple = self.size_multiple
        if z_t.shape[-2] % multiple or z_t.shape[-1] % multiple:
            raise ValueError(f"image size {tuple(z_t.shape[-2:])} is not a multiple of {multiple}")
        conds = iter(cond)
        emb = self.time_mlp(timestep_embedding(self.time_scale * t, self.time_freqs).to(z_t.dtype))

        h = self.conv_in(z_t)
        skips = [h]
        for level, blocks in enumerate(self.down):
            for blk in blocks:
                h = blk(h, emb, next(conds))
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                skips.append(h)

        for blk in self.middle:
            h = blk(h, emb, next(conds))

        for level, blocks in enumerate(self.up):
            for blk in blocks:
                h = blk(torch.cat([h, skips.pop()], dim=1), emb, next(conds))
            if level < len(self.upsample):
                h = self.upsample[level](h)

        out = self.head_conv(self.head_norm(h))
        return out[:, :3], out[:, 3:]


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs with growth gc, LeakyReLU 0.2, residual scaled by 0.2."""

    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(nf + i * gc, gc if i < 4 else nf, 3, padding=1) for i in range(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in self.convs[:-1]:
            features.append(F.leaky_relu(conv(torch.cat(features, dim=1)), 0.2))
        return x + 0.2 * self.convs[-1](torch.cat(features, dim=1))


class RRDB(nn.Sequential):
    """Three residual dense blocks, residual scaled by 0.2."""

    def __init__(self, nf: int, gc: int):
        super().__init__(*(ResidualDenseBlock(nf, gc) for _ in range(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * super().forward(x)


class RRDBEncoder(nn.Module):
    """LR image y (B, 3, h, w) in [0, 1] -> tapped RRDB features (B, nf * len(taps), h, w).

    Blocks after the last tap are kept (they belong to the pretrained RRDB and to the parameter
    count) but not evaluated: their output is never used.
    """

    def __init__(self, cfg: NetConfig):
        super().__init__()
        if not all(1 <= tap <= cfg.enc_blocks for tap in cfg.enc_taps):
            raise ValueError(f"encoder taps {cfg.enc_taps} must lie in 1..{cfg.enc_blocks}")
        self.taps = tuple(sorted(cfg.enc_taps))
        self.conv_first = nn.Conv2d(3, cfg.enc_nf, 3, padding=1)
        self.blocks = nn.ModuleList(RRDB(cfg.enc_nf, cfg.enc_gc) for _ in range(cfg.enc_blocks))
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
                conv.weight.data.mul_(0.1)
                nn.init.zeros_(conv.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        h = self.conv_first(y)
        tapped = []
        for index, blk in enumerate(self.blocks[: self.taps[-1]], start=1):
            h = blk(h)
            if index in self.taps:
                tapped.append(h)
        return torch.cat(tapped, dim=1)


class ECDPNet(nn.Module):
    """The encoder (run once per LR image) and the denoiser (run once per NFE)."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.config = cfg
        self.encoder = RRDBEncoder(cfg)
        self.denoiser = UNet(cfg)

    def encode(self, y: torch.Tensor, hr_size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        """The conditioning `cond` of the LR batch y (B, 3, h, w) in [0, 1] for HR images of
        hr_size: every residual block's projected encoder features at its resolution."""
        return self.denoiser.block_conditioning(self.encoder(y), hr_size)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond: tuple[torch.Tensor, ...]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The denoiser contract D(z_t, t, cond) -> (eps_hat, z0_hat), as UNet.forward."""
        return self.denoiser(z_t, t, cond)


def build(preset: str | NetConfig) -> ECDPNet:
    """An ECDPNet from a preset name (see PRESETS) or a NetConfig."""
    if isinstance(preset, NetConfig):
        return ECDPNet(preset)
    if preset not in PRESETS:
        raise ValueError(f"unknown network preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return ECDPNet(PRESETS[preset])
