"""Triton GroupNorm + SiLU laid out for channels_last: a program owns a slab of pixels x all channels.

Computes ``SiLU(GroupNorm(x + add_channel[:, :, None, None] + add))`` like ecdp.kernels.triton_gn,
in two launches and without a one-program launch:

- ``_gnh_stats``: grid (slabs, batch). A program walks its slab of one sample in tiles of
  BLOCK_P pixels x all channels, seen as (pixels, groups, channels of a group): in channels_last
  a tile is one contiguous run of memory. Each thread accumulates its elements' sums and sums of
  squares, shifted by the slab's first pixel (no E[x^2] - E[x]^2 cancellation), and the program
  reduces them once at the end into each group's mean and centered sum of squares over the slab.
- ``_gnh_apply``: the same grid. A program first merges the slabs' partials of its sample into
  each group's mean and 1 / std (Chan's parallel formula; the partials are small and stay in L2),
  then normalizes its slab, applies the affine map and SiLU, and writes.

The slabs are cut so that the grid has about ``TARGET_PROGRAMS`` programs whatever the batch
(enough for 132 SMs at batch 1). The producer's additions are read in the same pass (add_channel
once per program and channel, add elementwise). Offsets within a sample are 32-bit (the sample's
base pointer is 64-bit) unless they pass int32 (the OFFSET64 variants). Deterministic: no atomics.

``group_norm_silu`` is ``launch`` registered as the operator ``ecdp::group_norm_silu_nhwc``
(``torch.library.triton_op``), so torch.compile keeps the kernels in its graph and fuses around
them. No dispatcher uses it by default: the GPU measurement decides where it serves.
"""
import math
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ecdp.kernels.layout import as_bcs, needs_offset64

TARGET_PROGRAMS = 264   # two per SM of a 132-SM GPU
TILE = 2048             # elements per tile (8 per thread at 8 warps)
WARPS = 8


@triton.jit
def _channels(G, CG, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr, OFFSET64: tl.constexpr):
    """Channel ids (1, BLOCK_G, BLOCK_CG) as (group, channel of the group), and their mask."""
    g = tl.arange(0, BLOCK_G)[None, :, None]
    ci = tl.arange(0, BLOCK_CG)[None, None, :]
    c = g * CG + ci
    if OFFSET64:
        c = c.to(tl.int64)
    return c, (g < G) & (ci < CG)


@triton.jit
def _pixels(p0, BLOCK_P: tl.constexpr, OFFSET64: tl.constexpr):
    """Pixel ids (BLOCK_P, 1, 1) from p0."""
    p = p0 + tl.arange(0, BLOCK_P)[:, None, None]
    if OFFSET64:
        p = p.to(tl.int64)
    return p


@triton.jit
def _load_sum(x_ptr, ach, add_ptr, p, c, mask, sxc, sxp, sdc, sdp, HAS_ACH: tl.constexpr, HAS_ADD: tl.constexpr):
    """x + add_channel + add in fp32 at (p, c) of one sample (pointers at the sample), 0 where masked."""
    v = tl.load(x_ptr + c * sxc + p * sxp, mask=mask, other=0.0).to(tl.float32)
    if HAS_ACH:
        v += ach
    if HAS_ADD:
        v += tl.load(add_ptr + c * sdc + p * sdp, mask=mask, other=0.0).to(tl.float32)
    return tl.where(mask, v, 0.0)


@triton.jit
def _slab(ach_ptr, P, G, CG, SLAB, sab, sac, HAS_ACH: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr,
          OFFSET64: tl.constexpr):
    """This program's sample b (int64), its pixels [p_lo, p_hi), the channel ids and mask, and the
    sample's add_channel at them (0.0 without)."""
    slab, b = tl.program_id(0), tl.program_id(1)
    b64 = b.to(tl.int64)
    p_lo = slab * SLAB
    p_hi = tl.minimum(p_lo + SLAB, P)
    c, cmask = _channels(G, CG, BLOCK_G, BLOCK_CG, OFFSET64)
    ach = 0.0
    if HAS_ACH:
        ach = tl.load(ach_ptr + b64 * sab + c * sac, mask=cmask, other=0.0).to(tl.float32)
    return b64, p_lo, p_hi, c, cmask, ach


@triton.jit
def _gnh_stats(x_ptr, ach_ptr, add_ptr, part_ptr, P, G, CG, SLAB,
               sxb, sxc, sxp, sab, sac, sdb, sdc, sdp,
               HAS_ACH: tl.constexpr, HAS_ADD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr,
               BLOCK_CG: tl.constexpr, OFFSET64: tl.constexpr):
    """Each group's mean and centered sum of squares over pixels [slab * SLAB, ...) of one sample:
    part[b, slab, 0, g] and part[b, slab, 1, g]."""
    b, p_lo, p_hi, c, cmask, ach = _slab(ach_ptr, P, G, CG, SLAB, sab, sac, HAS_ACH, BLOCK_G, BLOCK_CG, OFFSET64)
    x_ptr += b * sxb
    add_ptr += b * sdb
    shift = _load_sum(x_ptr, ach, add_ptr, _pixels(p_lo, 1, OFFSET64), c, cmask, sxc, sxp, sdc, sdp,
                      HAS_ACH, HAS_ADD)
    acc = tl.zeros((BLOCK_P, BLOCK_G, BLOCK_CG), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_P, BLOCK_G, BLOCK_CG), dtype=tl.float32)
    for p0 in range(p_lo, p_hi, BLOCK_P):
        p = _pixels(p0, BLOCK_P, OFFSET64)
        mask = cmask & (p < p_hi)
        v = _load_sum(x_ptr, ach, add_ptr, p, c, mask, sxc, sxp, sdc, sdp, HAS_ACH, HAS_ADD)
        d = tl.where(mask, v - shift, 0.0)
        acc += d
        acc2 += d * d
    n = (p_hi - p_lo).to(tl.float32)
    s1 = tl.sum(acc, axis=0)    # (BLOCK_G, BLOCK_CG): per channel over the slab
    s2 = tl.sum(acc2, axis=0)
    cm = tl.reshape(cmask, (BLOCK_G, BLOCK_CG))
    mean_c = tl.where(cm, tl.reshape(shift, (BLOCK_G, BLOCK_CG)) + s1 / n, 0.0)
    m2_c = tl.where(cm, s2 - s1 * s1 / n, 0.0)
    mean = tl.sum(mean_c, axis=1) / CG
    d = tl.where(cm, mean_c - mean[:, None], 0.0)
    m2 = tl.sum(m2_c, axis=1) + n * tl.sum(d * d, axis=1)
    g = tl.arange(0, BLOCK_G)
    row = part_ptr + (b * tl.num_programs(0) + tl.program_id(0)) * 2 * G + g
    tl.store(row, mean, mask=g < G)
    tl.store(row + G, m2, mask=g < G)


@triton.jit
def _merged_stats(part_ptr, b, n_slabs, P, G, CG, SLAB, eps, BLOCK_K: tl.constexpr, BLOCK_G: tl.constexpr):
    """Mean and 1 / std (BLOCK_G,) of sample b's groups from its slabs' partials (Chan et al.)."""
    g = tl.arange(0, BLOCK_G)[None, :]
    base = part_ptr + b * n_slabs * 2 * G
    total = tl.zeros((BLOCK_G,), dtype=tl.float32)
    for k0 in range(0, n_slabs, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)[:, None]
        mask = (k < n_slabs) & (g < G)
        n_k = tl.minimum(P - k * SLAB, SLAB).to(tl.float32)
        total += tl.sum(tl.where(mask, n_k * tl.load(base + k * 2 * G + g, mask=mask, other=0.0), 0.0), axis=0)
    mean = total / (P * 1.0)
    m2 = tl.zeros((BLOCK_G,), dtype=tl.float32)
    for k0 in range(0, n_slabs, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)[:, None]
        mask = (k < n_slabs) & (g < G)
        n_k = tl.minimum(P - k * SLAB, SLAB).to(tl.float32) * CG
        d = tl.load(base + k * 2 * G + g, mask=mask, other=0.0) - mean[None, :]
        part_m2 = tl.load(base + k * 2 * G + G + g, mask=mask, other=0.0)
        m2 += tl.sum(tl.where(mask, part_m2 + n_k * d * d, 0.0), axis=0)
    return mean, 1.0 / tl.sqrt(m2 / (P * 1.0 * CG) + eps)


@triton.jit
def _gnh_apply(x_ptr, ach_ptr, add_ptr, w_ptr, bias_ptr, part_ptr, out_ptr, P, G, CG, SLAB, eps,
               sxb, sxc, sxp, sab, sac, sdb, sdc, sdp, sob, soc, sop,
               HAS_ACH: tl.constexpr, HAS_ADD: tl.constexpr, SILU: tl.constexpr, BLOCK_P: tl.constexpr,
               BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr, BLOCK_K: tl.constexpr, OFFSET64: tl.constexpr):
    """Merge sample b's partials, then normalize pixels [slab * SLAB, ...) of it."""
    b, p_lo, p_hi, c, cmask, ach = _slab(ach_ptr, P, G, CG, SLAB, sab, sac, HAS_ACH, BLOCK_G, BLOCK_CG, OFFSET64)
    mean, rstd = _merged_stats(part_ptr, b, tl.num_programs(0), P, G, CG, SLAB, eps, BLOCK_K, BLOCK_G)
    x_ptr += b * sxb
    add_ptr += b * sdb
    out_ptr += b * sob
    w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    scale = rstd[None, :, None] * w
    shift = tl.load(bias_ptr + c, mask=cmask, other=0.0).to(tl.float32) - mean[None, :, None] * scale
    for p0 in range(p_lo, p_hi, BLOCK_P):
        p = _pixels(p0, BLOCK_P, OFFSET64)
        mask = cmask & (p < p_hi)
        y = _load_sum(x_ptr, ach, add_ptr, p, c, mask, sxc, sxp, sdc, sdp, HAS_ACH, HAS_ADD) * scale + shift
        if SILU:
            y = y * tl.sigmoid(y)
        tl.store(out_ptr + c * soc + p * sop, y.to(out_ptr.dtype.element_ty), mask=mask)


def _pow2(n):
    return triton.next_power_of_2(max(int(n), 1))


def _traceable(kernel):
    """The kernel wrapped for torch.compile (a recorder of ecdp.kernels.launches is used as it is)."""
    return wrap_triton(kernel) if isinstance(kernel, triton.runtime.JITFunction) else kernel


def launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int,
                    add_channel: Optional[torch.Tensor] = None, add: Optional[torch.Tensor] = None,
                    eps: float = 1e-5, silu: bool = True) -> torch.Tensor:
    """SiLU(GroupNorm(x + add_channel[:, :, None, None] + add)), fp32 statistics, output in x's layout:
    the launches behind the operator ``group_norm_silu`` (run it directly to record them on meta).

    x: (B, C, ...) in any dense layout (channels_last is the one it is built for); weight, bias: (C,);
    add_channel: (B, C) or None; add: broadcastable to x or None. Output dtype: x's promoted with the
    adds'. Raises ValueError when C does not split into `groups`.
    """
    if x.dim() < 3:
        raise ValueError(f"group_norm_silu expects (B, C, ...) input, got shape {tuple(x.shape)}")
    B, C = x.shape[:2]
    if C % groups:
        raise ValueError(f"{C} channels do not split into {groups} groups")
    CG, P = C // groups, math.prod(x.shape[2:])
    out_dtype = x.dtype
    for extra in (add_channel, add):
        if extra is not None:
            out_dtype = torch.promote_types(out_dtype, extra.dtype)
    x, x_strides = as_bcs(x)
    out = torch.empty_like(x, dtype=out_dtype)
    if x.numel() == 0:
        return out
    ach = add_channel.reshape(B, C) if add_channel is not None else x
    ach_strides = ach.stride()[:2] if add_channel is not None else (0, 0)
    addt, add_strides = as_bcs(add.expand_as(x)) if add is not None else (x, (0, 0, 0))
    block_g, block_cg = _pow2(groups), _pow2(CG)
    block_p = max(1, TILE // (block_g * block_cg))
    slab = triton.cdiv(triton.cdiv(P, max(1, min(triton.cdiv(TARGET_PROGRAMS, B), triton.cdiv(P, block_p)))),
                       block_p) * block_p
    grid = (triton.cdiv(P, slab), B)
    part = torch.empty((B, grid[0], 2, groups), device=x.device, dtype=torch.float32)
    common = dict(HAS_ACH=add_channel is not None, HAS_ADD=add is not None, BLOCK_P=block_p, BLOCK_G=block_g,
                  BLOCK_CG=block_cg, OFFSET64=needs_offset64(x, addt, out), num_warps=WARPS)
    strides = (*x_strides, *ach_strides, *add_strides)
    _traceable(_gnh_stats)[grid](x, ach, addt, part, P, groups, CG, slab, *strides, **common)
    _traceable(_gnh_apply)[grid](x, ach, addt, weight, bias, part, out, P, groups, CG, slab, eps,
                                 *strides, *as_bcs(out)[1], SILU=silu, BLOCK_K=max(1, TILE // block_g), **common)
    return out


group_norm_silu = triton_op("ecdp::group_norm_silu_nhwc", mutates_args=())(launch)
