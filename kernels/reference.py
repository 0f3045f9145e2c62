"""Exact PyTorch references of the fused kernels."""
import torch
import torch.nn.functional as F


def group_norm_silu(x, weight, bias, groups, *, add_channel=None, add=None, eps=1e-5, silu=True):
    """SiLU(GroupNorm(x + add_channel[:, :, None, None] + add)), statistics in fp32.

    On the CPU, an input in the dtype of the weights (bf16 in ecdp.engine.cpu_network) goes to
    F.group_norm as it is: its CPU kernel computes the statistics and the affine in fp32 and
    rounds once, so the values are those of the fp32 round trip that other devices and autocast
    (fp32 weights: also what the exporters trace) take up to one bf16 rounding (the affine's
    operations are ordered differently), without its two conversion passes (6x slower in bf16
    channels_last).
    The second add and the SiLU run in place on tensors made here (the SiLU only without autograd).
    """
    fresh = add_channel is not None   # x is then a tensor made here, which the second add may overwrite
    if fresh:
        x = x + add_channel[:, :, None, None]
    if add is not None:
        keeps = add.shape == x.shape and torch.result_type(x, add) == x.dtype
        x = x.add_(add) if fresh and keeps else x + add
    if x.device.type == "cpu" and x.dtype == weight.dtype:
        y = F.group_norm(x, groups, weight, bias, eps)
    else:
        y = F.group_norm(x.float(), groups, weight.float(), bias.float(), eps).to(x.dtype)
    return F.silu(y, inplace=not y.requires_grad) if silu else y


def ode_update(z_t, eps_hat, z0_hat, coef, *, base=None, acc=None, write_acc=False, out=None, acc_out=None):
    """Hybrid noise estimate, probability-flow drift and solver update in one elementwise pass.

    All image tensors are (B, ...) of one shape; coef is (B, 9), the linear form's coefficients
    (see ecdp.kernels.ode_coef for the formulas and the builders). Arithmetic in fp32, or in float64
    when coef is float64 (the exact evaluation tests compare against). Returns (z_out, acc_out):
    z_out has the dtype of base (z_t when base is None), acc_out that of acc (else z_out's) and is
    None unless write_acc or acc_out is given. out / acc_out are written in place when given (they
    may alias the inputs).
    """
    compute = torch.float64 if coef.dtype == torch.float64 else torch.float32
    shape = (-1,) + (1,) * (z_t.dim() - 1)
    z_z, z_eps, z_z0, z_base, z_acc, acc_z, acc_eps, acc_z0, acc_acc = (
        v.reshape(shape) for v in coef.to(compute).unbind(-1))
    state = z_t if base is None else base
    z, eps, z0 = z_t.to(compute), eps_hat.to(compute), z0_hat.to(compute)
    z_next = z_z * z + z_eps * eps + z_z0 * z0 + z_base * state.to(compute)
    acc_next = None
    if write_acc or acc_out is not None:
        acc_next = acc_z * z + acc_eps * eps + acc_z0 * z0
    if acc is not None:
        z_next = z_next + z_acc * acc.to(compute)
        acc_next = None if acc_next is None else acc_next + acc_acc * acc.to(compute)
    if acc_next is not None:
        acc_next = _written(acc_next, acc_out, state.dtype if acc is None else acc.dtype)
    return _written(z_next, out, state.dtype), acc_next


def _written(value, out, dtype):
    """`value` copied into `out` when given, else cast to `dtype`."""
    if out is None:
        return value.to(dtype)
    return out.copy_(value)
