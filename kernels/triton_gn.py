"""Triton GroupNorm + SiLU with fp32 statistics, fused with the inputs' additions.

Computes ``SiLU(GroupNorm(x + add_channel[:, :, None, None] + add))`` (the sum is what is
normalized). Every tensor is addressed as (batch, channel, spatial) with its own three strides, so
NCHW and channels_last (and broadcast inputs with zero strides) are read in place and the output
keeps the layout of ``x``.

A program works on a tile of ``BLOCK_G`` groups x ``BLOCK_CG`` channels x ``BLOCK_S`` positions of
one sample. Two paths:

- fused (one kernel): when a tile holds a whole group, one program loads it once, computes the
  mean and the centered sum of squares in fp32, normalizes and writes;
- split (three kernels): ``_gn_stats`` gives every (sample, group) a few spatial spans, one program
  each, and writes each span's mean and centered sum of squares (sub-tiles merged with Chan's
  parallel formula, so no E[x^2] - E[x]^2 cancellation); ``_gn_finalize`` merges the spans into
  mean and 1/std per (sample, group); ``_gn_apply`` normalizes, applies the affine map and SiLU.

Deterministic: no atomics, the reduction order depends on the shape only. Offsets within a sample
are 32-bit unless one passes int32 (``layout.needs_offset64``), then 64-bit (the OFFSET64 variants).
"""
import math

import torch
import triton
import triton.language as tl

from ecdp.kernels.layout import as_bcs, bcs_strides, needs_offset64

FUSED_MAX_ELEMENTS = 8192   # a group of at most this many (padded) elements takes the fused path
SPLIT_TILE_MAX = 4096       # elements per program tile on the split path
TARGET_PROGRAMS = 1024      # the split path cuts each group into spans until about this many programs
MAX_SPLITS = 256            # and into at most this many spans


@triton.jit
def _tile_index(pid_bg, n_gblocks, G, CG, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr):
    """Sample, group ids (BLOCK_G,), channel ids and channel mask (BLOCK_G, BLOCK_CG, 1)."""
    b = pid_bg // n_gblocks
    g = (pid_bg % n_gblocks) * BLOCK_G + tl.arange(0, BLOCK_G)
    ci = tl.arange(0, BLOCK_CG)
    c = g[:, None] * CG + ci[None, :]
    cmask = (g[:, None] < G) & (ci[None, :] < CG)
    return b, g, c[:, :, None], cmask[:, :, None]


@triton.jit
def _widen(index, OFFSET64: tl.constexpr):
    """Channel or spatial indices in 64 bits when OFFSET64 (offsets within a sample past int32)."""
    if OFFSET64:
        index = index.to(tl.int64)
    return index


@triton.jit
def _load_sum(x_ptr, ach_ptr, add_ptr, b, c, s, mask,
              sxb, sxc, sxs, sab, sac, sdb, sdc, sds,
              HAS_ACH: tl.constexpr, HAS_ADD: tl.constexpr):
    """x + add_channel + add at (b, c, s) in fp32, zero where masked."""
    b64 = b.to(tl.int64)
    v = tl.load(x_ptr + b64 * sxb + c * sxc + s * sxs, mask=mask, other=0.0).to(tl.float32)
    if HAS_ACH:
        v += tl.load(ach_ptr + b64 * sab + c * sac, mask=mask, other=0.0).to(tl.float32)
    if HAS_ADD:
        v += tl.load(add_ptr + b64 * sdb + c * sdc + s * sds, mask=mask, other=0.0).to(tl.float32)
    return tl.where(mask, v, 0.0)


@triton.jit
def _normalize_store(v, mean, rstd, w_ptr, bias_ptr, out_ptr, b, c, s, cmask, mask,
                     sob, soc, sos, SILU: tl.constexpr):
    """(v - mean) * rstd * w + bias, then SiLU; mean and rstd are (BLOCK_G,)."""
    w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    scale = rstd[:, None, None] * w
    y = v * scale + (bias - mean[:, None, None] * scale)
    if SILU:
        y = y * tl.sigmoid(y)
    ptr = out_ptr + b.to(tl.int64) * sob + c * soc + s * sos
    tl.store(ptr, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gn_fused(x_ptr, ach_ptr, add_ptr, w_ptr, bias_ptr, out_ptr,
              S, G, CG, n_gblocks, eps,
              sxb, sxc, sxs, sab, sac, sdb, sdc, sds, sob, soc, sos,
              HAS_ACH: tl.constexpr, HAS_ADD: tl.constexpr, SILU: tl.constexpr,
              BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr, BLOCK_S: tl.constexpr, OFFSET64: tl.constexpr):
    """One program per BLOCK_G groups of one sample, whole groups in registers."""
    b, g, c, cmask = _tile_index(tl.program_id(0), n_gblocks, G, CG, BLOCK_G, BLOCK_CG)
    s = tl.arange(0, BLOCK_S)[None, None, :]
    mask = cmask & (s < S)
    c, s = _widen(c, OFFSET64), _widen(s, OFFSET64)
    v = _load_sum(x_ptr, ach_ptr, add_ptr, b, c, s, mask,
                  sxb, sxc, sxs, sab, sac, sdb, sdc, sds, HAS_ACH, HAS_ADD)
    n = CG * S * 1.0
    mean = tl.sum(tl.sum(v, axis=2), axis=1) / n
    d = tl.where(mask, v - mean[:, None, None], 0.0)
    var = tl.sum(tl.sum(d * d, axis=2), axis=1) / n
    rstd = 1.0 / tl.sqrt(var + eps)
    _normalize_store(v, mean, rstd, w_ptr, bias_ptr, out_ptr, b, c, s, cmask, mask,
                     sob, soc, sos, SILU)


@triton.jit
def _gn_stats(x_ptr, ach_ptr, add_ptr, part_mean_ptr, part_m2_ptr,
              S, G, CG, n_gblocks, SPAN,
              sxb, sxc, sxs, sab, sac, sdb, sdc, sds,
              HAS_ACH: tl.constexpr, HAS_ADD: tl.constexpr,
              BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr, BLOCK_S: tl.constexpr, OFFSET64: tl.constexpr):
    """Mean and centered sum of squares of one spatial span [split * SPAN, ...) per group."""
    b, g, c, cmask = _tile_index(tl.program_id(0), n_gblocks, G, CG, BLOCK_G, BLOCK_CG)
    split = tl.program_id(1)
    s_lo = split * SPAN
    s_hi = tl.minimum(s_lo + SPAN, S)
    mean = tl.zeros((BLOCK_G,), dtype=tl.float32)
    m2 = tl.zeros((BLOCK_G,), dtype=tl.float32)
    for s0 in range(s_lo, s_hi, BLOCK_S):
        s = (s0 + tl.arange(0, BLOCK_S))[None, None, :]
        mask = cmask & (s < s_hi)
        c_w, s_w = _widen(c, OFFSET64), _widen(s, OFFSET64)
        v = _load_sum(x_ptr, ach_ptr, add_ptr, b, c_w, s_w, mask,
                      sxb, sxc, sxs, sab, sac, sdb, sdc, sds, HAS_ACH, HAS_ADD)
        n_tile = (CG * tl.minimum(s_hi - s0, BLOCK_S)).to(tl.float32)
        mean_tile = tl.sum(tl.sum(v, axis=2), axis=1) / n_tile
        d = tl.where(mask, v - mean_tile[:, None, None], 0.0)
        m2_tile = tl.sum(tl.sum(d * d, axis=2), axis=1)
        # Chan et al.: merge the n elements seen so far with the tile's.
        n = (s0 - s_lo).to(tl.float32) * CG
        delta = mean_tile - mean
        mean += delta * (n_tile / (n + n_tile))
        m2 += m2_tile + delta * delta * (n * n_tile / (n + n_tile))
    row = b * G + g
    gmask = g < G
    tl.store(part_mean_ptr + row * tl.num_programs(1) + split, mean, mask=gmask)
    tl.store(part_m2_ptr + row * tl.num_programs(1) + split, m2, mask=gmask)


@triton.jit
def _gn_finalize(part_mean_ptr, part_m2_ptr, mean_ptr, rstd_ptr,
                 rows, S, CG, SPAN, n_splits, eps,
                 BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Merge the spans of each (sample, group) row into its mean and 1 / std."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    k = tl.arange(0, BLOCK_K)
    mask = (r < rows)[:, None] & (k < n_splits)[None, :]
    offs = r[:, None] * n_splits + k[None, :]
    part_mean = tl.load(part_mean_ptr + offs, mask=mask, other=0.0)
    part_m2 = tl.load(part_m2_ptr + offs, mask=mask, other=0.0)
    n_k = (tl.minimum(tl.maximum(S - k * SPAN, 0), SPAN).to(tl.float32) * CG)[None, :]
    n = CG * S * 1.0
    mean = tl.sum(part_mean * n_k, axis=1) / n
    d = part_mean - mean[:, None]
    var = tl.sum(part_m2 + n_k * d * d, axis=1) / n
    rmask = r < rows
    tl.store(mean_ptr + r, mean, mask=rmask)
    tl.store(rstd_ptr + r, 1.0 / tl.sqrt(var + eps), mask=rmask)


@triton.jit
def _gn_apply(x_ptr, ach_ptr, add_ptr, w_ptr, bias_ptr, mean_ptr, rstd_ptr, out_ptr,
              S, G, CG, n_gblocks,
              sxb, sxc, sxs, sab, sac, sdb, sdc, sds, sob, soc, sos,
              HAS_ACH: tl.constexpr, HAS_ADD: tl.constexpr, SILU: tl.constexpr,
              BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr, BLOCK_S: tl.constexpr, OFFSET64: tl.constexpr):
    """Normalize one tile with the finalized statistics (spatial tiles on grid axis 0)."""
    b, g, c, cmask = _tile_index(tl.program_id(1), n_gblocks, G, CG, BLOCK_G, BLOCK_CG)
    s = (tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S))[None, None, :]
    mask = cmask & (s < S)
    c, s = _widen(c, OFFSET64), _widen(s, OFFSET64)
    v = _load_sum(x_ptr, ach_ptr, add_ptr, b, c, s, mask,
                  sxb, sxc, sxs, sab, sac, sdb, sdc, sds, HAS_ACH, HAS_ADD)
    gmask = g < G
    mean = tl.load(mean_ptr + b * G + g, mask=gmask, other=0.0)
    rstd = tl.load(rstd_ptr + b * G + g, mask=gmask, other=0.0)
    _normalize_store(v, mean, rstd, w_ptr, bias_ptr, out_ptr, b, c, s, cmask, mask,
                     sob, soc, sos, SILU)


def _pow2(n):
    return triton.next_power_of_2(max(int(n), 1))


def _warps(tile_elements, per_thread=16):
    """Warps for a tile: `per_thread` elements per thread, 1 to 8 warps."""
    return max(1, min(8, tile_elements // (32 * per_thread)))


def group_norm_silu(x, weight, bias, groups, *, add_channel=None, add=None, eps=1e-5, silu=True,
                    out=None, tile=None, max_splits=MAX_SPLITS):
    """SiLU(GroupNorm(x + add_channel[:, :, None, None] + add)) on the Triton kernels.

    x: (B, C, *spatial), any float dtype, NCHW-contiguous or channels_last (other layouts are
    copied); weight, bias: (C,); add_channel: (B, C) or broadcastable; add: broadcastable to x,
    any layout. Statistics and arithmetic in fp32; the output has the dtype of the sum
    (``torch.result_type`` of x and the added inputs, i.e. x's dtype when they agree) and the
    layout of x, or is written into `out` (any layout of x's shape; returned).
    `tile` caps the elements one program holds (a power of two; None picks by size) and
    `max_splits` the spatial spans per group: both only choose between equivalent schedules.
    """
    if x.dim() < 2:
        raise ValueError(f"group_norm_silu expects (B, C, ...) input, got shape {tuple(x.shape)}")
    B, C = x.shape[:2]
    if C % groups:
        raise ValueError(f"{C} channels do not split into {groups} groups")
    S = math.prod(x.shape[2:])
    CG = C // groups
    out_dtype = x.dtype
    x, (sxb, sxc, sxs) = as_bcs(x)
    if add_channel is not None:
        out_dtype = torch.promote_types(out_dtype, add_channel.dtype)
        add_channel = add_channel.reshape(add_channel.shape[0], -1).expand(B, C)
        sab, sac = add_channel.stride()
    else:
        sab = sac = 0
    if add is not None:
        out_dtype = torch.promote_types(out_dtype, add.dtype)
        add, (sdb, sdc, sds) = as_bcs(add.expand_as(x))
    else:
        sdb = sdc = sds = 0
    if out is None:
        out = torch.empty_like(x, dtype=out_dtype)
    if out.shape != x.shape or bcs_strides(out) is None:
        raise ValueError(f"out must have shape {tuple(x.shape)} and a dense (B, C, spatial) layout")
    sob, soc, sos = bcs_strides(out)
    if x.numel() == 0:
        return out
    weight, bias = weight.contiguous(), bias.contiguous()
    ach = add_channel if add_channel is not None else x
    addt = add if add is not None else x
    flags = dict(HAS_ACH=add_channel is not None, HAS_ADD=add is not None)
    offset64 = dict(OFFSET64=needs_offset64(x, add, out))
    strides = (sxb, sxc, sxs, sab, sac, sdb, sdc, sds)

    block_cg = _pow2(CG)
    # Channels-contiguous tensors (channels_last) get several groups per tile for wide loads.
    channels_inner = sxc == 1 and C > 1
    block_g = min(_pow2(groups), max(1, 64 // block_cg)) if channels_inner else 1
    fused_elements = block_g * block_cg * _pow2(S)
    if fused_elements <= (tile or FUSED_MAX_ELEMENTS):
        n_gblocks = triton.cdiv(groups, block_g)
        _gn_fused[(B * n_gblocks,)](
            x, ach, addt, weight, bias, out, S, groups, CG, n_gblocks, eps,
            *strides, sob, soc, sos, SILU=silu, **flags, **offset64,
            BLOCK_G=block_g, BLOCK_CG=block_cg, BLOCK_S=_pow2(S), num_warps=_warps(fused_elements))
        return out

    tile = tile or max(512, min(SPLIT_TILE_MAX, _pow2(x.numel() // 1024)))
    if block_g * block_cg > tile:
        block_g = 1
    block_s = min(_pow2(S), max(1, tile // (block_g * block_cg)))
    n_gblocks = triton.cdiv(groups, block_g)
    tiles_s = triton.cdiv(S, block_s)
    wanted = triton.cdiv(TARGET_PROGRAMS, B * n_gblocks)
    span = triton.cdiv(tiles_s, max(1, min(tiles_s, wanted, max_splits))) * block_s
    n_splits = triton.cdiv(S, span)
    warps = _warps(block_g * block_cg * block_s)
    # A channels-inner apply tile keeps more live values per element (its weight, bias and statistics
    # vary along the tile's inner axis): 16 elements per thread spill in fp16 on sm_90, 8 do not.
    apply_warps = _warps(block_g * block_cg * block_s, per_thread=8) if channels_inner else warps
    rows = B * groups
    part_mean = torch.empty((rows, n_splits), device=x.device, dtype=torch.float32)
    part_m2 = torch.empty_like(part_mean)
    mean = torch.empty(rows, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    _gn_stats[(B * n_gblocks, n_splits)](
        x, ach, addt, part_mean, part_m2, S, groups, CG, n_gblocks, span, *strides, **flags, **offset64,
        BLOCK_G=block_g, BLOCK_CG=block_cg, BLOCK_S=block_s, num_warps=warps)
    block_k = _pow2(n_splits)
    block_r = max(1, min(_pow2(rows), 1024 // block_k))
    _gn_finalize[(triton.cdiv(rows, block_r),)](
        part_mean, part_m2, mean, rstd, rows, S, CG, span, n_splits, eps,
        BLOCK_R=block_r, BLOCK_K=block_k, num_warps=_warps(block_r * block_k))
    _gn_apply[(tiles_s, B * n_gblocks)](
        x, ach, addt, weight, bias, mean, rstd, out, S, groups, CG, n_gblocks,
        *strides, sob, soc, sos, SILU=silu, **flags, **offset64,
        BLOCK_G=block_g, BLOCK_CG=block_cg, BLOCK_S=block_s, num_warps=apply_warps)
    return out
