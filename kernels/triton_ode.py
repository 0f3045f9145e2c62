"""Triton ODE update: hybrid noise estimate, probability-flow drift and solver update in one pass.

The update is one linear combination of its inputs per output, with per-sample coefficients
folded in float64 (the formulas and the layout are in ecdp.kernels.ode_coef): five multiply-adds
per element and no division. Every image tensor is addressed as (batch, channel, spatial) with
its own strides, so the network's head outputs (channel slices of one 6-channel tensor) are read
in place. A program handles BLOCK positions of one (sample, channel); it reads each input element
once and writes each output once, so outputs may alias inputs. Offsets within a sample are 32-bit
unless one passes int32, then 64-bit (``layout.needs_offset64``).
"""
import math

import torch
import triton
import triton.language as tl

from ecdp.kernels.ode_coef import COEF_FIELDS
from ecdp.kernels.layout import as_bcs, bcs_strides, needs_offset64

BLOCK = 1024


@triton.jit
def _load(ptr, b, c, s, sb, sc, ss, mask):
    return tl.load(ptr + b.to(tl.int64) * sb + c * sc + s * ss, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _ode_update(z_ptr, e_ptr, x0h_ptr, base_ptr, acc_ptr, coef_ptr, out_ptr, acc_out_ptr, S, scoef,
                szb, szc, szs, seb, sec, ses, sxb, sxc, sxs, sbb, sbc, sbs, sab, sac, sas,
                sob, soc, sos, spb, spc, sps,
                HAS_BASE: tl.constexpr, HAS_ACC: tl.constexpr,
                WRITE_ACC: tl.constexpr, BLOCK: tl.constexpr, OFFSET64: tl.constexpr):
    s = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    c = tl.program_id(1)
    b = tl.program_id(2)
    mask = s < S
    if OFFSET64:   # offsets within a sample past int32
        s = s.to(tl.int64)
        c = c.to(tl.int64)
    k = coef_ptr + b * scoef
    z_z, z_eps, z_z0, z_base, z_acc = tl.load(k), tl.load(k + 1), tl.load(k + 2), tl.load(k + 3), tl.load(k + 4)
    acc_z, acc_eps, acc_z0, acc_acc = tl.load(k + 5), tl.load(k + 6), tl.load(k + 7), tl.load(k + 8)

    z = _load(z_ptr, b, c, s, szb, szc, szs, mask)
    eps_hat = _load(e_ptr, b, c, s, seb, sec, ses, mask)
    z0_hat = _load(x0h_ptr, b, c, s, sxb, sxc, sxs, mask)
    z_next = z_z * z + z_eps * eps_hat + z_z0 * z0_hat
    acc_next = acc_z * z + acc_eps * eps_hat + acc_z0 * z0_hat
    if HAS_BASE:
        z_next += z_base * _load(base_ptr, b, c, s, sbb, sbc, sbs, mask)
    else:
        z_next += z_base * z
    if HAS_ACC:
        acc = _load(acc_ptr, b, c, s, sab, sac, sas, mask)
        z_next += z_acc * acc
        acc_next += acc_acc * acc
    b64 = b.to(tl.int64)
    tl.store(out_ptr + b64 * sob + c * soc + s * sos, z_next.to(out_ptr.dtype.element_ty), mask=mask)
    if WRITE_ACC:
        tl.store(acc_out_ptr + b64 * spb + c * spc + s * sps,
                 acc_next.to(acc_out_ptr.dtype.element_ty), mask=mask)


def _output(buffer, like, dtype, name):
    if buffer is None:
        return torch.empty_like(like, dtype=dtype)
    if buffer.shape != like.shape or bcs_strides(buffer) is None:
        raise ValueError(f"{name} must have shape {tuple(like.shape)} and a dense (B, C, spatial) layout")
    return buffer


def ode_update(z_t, eps_hat, z0_hat, coef, *, base=None, acc=None, write_acc=False, out=None, acc_out=None):
    """The Triton version of ecdp.kernels.reference.ode_update (same signature and results).

    coef is read in place when its rows are contiguous; a row expanded over the batch (stride 0,
    one coefficient row for every sample) costs no copy.
    """
    if z_t.dim() < 2:
        raise ValueError(f"ode_update expects (B, C, ...) tensors, got shape {tuple(z_t.shape)}")
    if coef.shape != (z_t.shape[0], len(COEF_FIELDS)):
        raise ValueError(f"coef must have shape ({z_t.shape[0]}, {len(COEF_FIELDS)}), got {tuple(coef.shape)}")
    B, C = z_t.shape[:2]
    S = math.prod(z_t.shape[2:])
    state = z_t if base is None else base
    out = _output(out, z_t, state.dtype, "out")
    write_acc = write_acc or acc_out is not None
    if write_acc:
        acc_out = _output(acc_out, z_t, state.dtype if acc is None else acc.dtype, "acc_out")
    if z_t.numel() == 0:
        return out, acc_out
    inputs = [z_t, eps_hat, z0_hat, base, acc]
    strides = []
    for i, t in enumerate(inputs):
        if t is None:
            inputs[i] = z_t
            strides += [0, 0, 0]
            continue
        if t.shape != z_t.shape:
            raise ValueError(f"ode_update inputs must share the shape {tuple(z_t.shape)}, got {tuple(t.shape)}")
        inputs[i], st = as_bcs(t)
        strides += st
    written = acc_out if write_acc else out
    strides += [*bcs_strides(out), *bcs_strides(written)]
    grid = (triton.cdiv(S, BLOCK), C, B)
    coef = coef.float()
    if coef.stride(-1) != 1:
        coef = coef.contiguous()
    _ode_update[grid](*inputs, coef, out, written, S, coef.stride(0), *strides, HAS_BASE=base is not None, HAS_ACC=acc is not None,
                      WRITE_ACC=write_acc, BLOCK=BLOCK, OFFSET64=needs_offset64(*inputs, out, written),
                      num_warps=4)
    return out, acc_out if write_acc else None
