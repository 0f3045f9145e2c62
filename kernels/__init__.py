"""Fused kernels for ECDP, each with an exact PyTorch reference (ecdp.kernels.reference).

- ``group_norm_silu(x, weight, bias, groups, *, add_channel=None, add=None, eps=1e-5, silu=True)``:
  SiLU(GroupNorm(x + add_channel[:, :, None, None] + add)) with fp32 statistics.
- ``ode_update(z_t, eps_hat, z0_hat, coef, *, base=None, acc=None, write_acc=False, out=None,
  acc_out=None) -> (z_out, acc_out)``: hybrid noise estimate, probability-flow drift and the
  Euler / Heun / RK4 / DPM-Solver++(2M) update in one pass; coefficients from ``ode_coef``
  (``solver_table``: a whole fixed-step solve, one row per network evaluation).

- ``group_norm_silu_slab``: the same GroupNorm + SiLU on ``triton_gn_nhwc``'s kernels (one program
  per slab of pixels x all channels, built for channels_last), as the operator
  ``ecdp::group_norm_silu_nhwc``, which torch.compile keeps in its graph; no dispatch, no gradients.

Dispatch: the Triton kernels run on CUDA tensors, and on any tensor when ``TRITON_INTERPRET=1``
(Triton's CPU interpreter); everything else, and everything when Triton is not installed, runs the
reference. torch.compile, ONNX export and TorchScript tracing always see the reference (Inductor
fuses it by itself). Whether a network uses them at all is its Speed's choice (``ecdp.speed``).
"""
import functools
import os

import torch

from ecdp.kernels import reference
from ecdp.kernels.ode_coef import (COEF_FIELDS, RK_TABLEAUS, Stage, dpmpp2m_coef, euler_coef, ode_coef, rk_coefs,
                                   solver_table)

__all__ = ["group_norm_silu", "group_norm_silu_slab", "ode_update", "triton_available",
           "ode_coef", "euler_coef", "rk_coefs", "dpmpp2m_coef", "solver_table", "Stage",
           "COEF_FIELDS", "RK_TABLEAUS"]

@functools.cache
def _triton():
    """The Triton kernel modules (triton_gn, triton_ode, triton_gn_nhwc), or None when Triton does not import.

    Imported on first use: Triton fixes interpreter or compiled mode when a kernel (its own
    library included) is defined, so TRITON_INTERPRET=1 must be set before triton is imported.
    """
    try:
        from ecdp.kernels import triton_gn, triton_gn_nhwc, triton_ode
    except ImportError:
        return None
    return triton_gn, triton_ode, triton_gn_nhwc


def triton_available():
    """Whether Triton imports (the kernels' modules load)."""
    return _triton() is not None


def _interpret():
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _use_triton(t):
    # Under torch.compile the reference is traced, and Inductor fuses it by itself.
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return False
    return (t.is_cuda or _interpret()) and triton_available()


class _GroupNormSiLU(torch.autograd.Function):
    """Forward on the Triton kernels; backward recomputes the forward through the PyTorch
    reference and differentiates that (no custom backward kernel: the GN statistics are recomputed)."""

    @staticmethod
    def forward(ctx, x, weight, bias, add_channel, add, groups, eps, silu):
        ctx.save_for_backward(x, weight, bias, add_channel, add)
        ctx.config = groups, eps, silu
        return _triton()[0].group_norm_silu(x, weight, bias, groups, add_channel=add_channel, add=add,
                                            eps=eps, silu=silu)

    @staticmethod
    def backward(ctx, grad_out):
        groups, eps, silu = ctx.config
        inputs = [t.detach().requires_grad_(need) if t is not None else None
                  for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad)]
        wanted = [t for t in inputs if t is not None and t.requires_grad]
        with torch.enable_grad():
            x, weight, bias, add_channel, add = inputs
            y = reference.group_norm_silu(x, weight, bias, groups, add_channel=add_channel, add=add,
                                          eps=eps, silu=silu)
            grads = iter(torch.autograd.grad(y, wanted, grad_out))
        return (*(next(grads) if t is not None and t.requires_grad else None for t in inputs),
                None, None, None)


def group_norm_silu(x, weight, bias, groups, *, add_channel=None, add=None, eps=1e-5, silu=True):
    """SiLU(GroupNorm(x + add_channel[:, :, None, None] + add)), statistics in fp32.

    x: (B, C, H, W) NCHW or channels_last; weight, bias: (C,); add_channel: (B, C); add: x's
    shape, any layout; silu=False gives the plain GroupNorm of the sum. With gradients required
    the Triton path runs inside an autograd Function whose backward recomputes through the
    reference, so x, weight, bias, add_channel and add all receive gradients.
    """
    if not _use_triton(x):
        return reference.group_norm_silu(x, weight, bias, groups, add_channel=add_channel, add=add,
                                         eps=eps, silu=silu)
    tensors = (x, weight, bias, add_channel, add)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _GroupNormSiLU.apply(x, weight, bias, add_channel, add, groups, eps, silu)
    return _triton()[0].group_norm_silu(x, weight, bias, groups, add_channel=add_channel, add=add,
                                        eps=eps, silu=silu)


def group_norm_silu_slab(x, weight, bias, groups, *, add_channel=None, add=None, eps=1e-5, silu=True):
    """group_norm_silu on the slab kernels, always (CUDA tensors; CPU ones under TRITON_INTERPRET=1):
    the operator ``ecdp::group_norm_silu_nhwc``, which torch.compile keeps in its graph and fuses
    around. Inference only (the operator has no backward). Raises RuntimeError without Triton."""
    if not triton_available():
        raise RuntimeError("the slab GroupNorm + SiLU kernels need Triton (pip install triton)")
    return _triton()[2].group_norm_silu(x, weight, bias, groups, add_channel, add, eps, silu)


def ode_update(z_t, eps_hat, z0_hat, coef, *, base=None, acc=None, write_acc=False, out=None, acc_out=None):
    """One fused solver update; see ecdp.kernels.ode_coef for the formulas and each solver's use.

    Returns (z_out, acc_out). With gradients required it runs the reference (autograd through
    PyTorch ops), so the Triton kernel only serves sampling.
    """
    kwargs = dict(base=base, acc=acc, write_acc=write_acc, out=out, acc_out=acc_out)
    tensors = (z_t, eps_hat, z0_hat, coef, base, acc)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if needs_grad or not _use_triton(z_t):
        return reference.ode_update(z_t, eps_hat, z0_hat, coef, **kwargs)
    return _triton()[1].ode_update(z_t, eps_hat, z0_hat, coef, **kwargs)
