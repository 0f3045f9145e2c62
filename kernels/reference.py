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

    All image tensors are (B, ...) of one shape; coef is (B, 11) fp32 (see ecdp.kernels.ode_coef
    for the formulas and the builders). Arithmetic in fp32. Returns (z_out, acc_out): z_out has
    the dtype of base (z_t when base is None), acc_out that of acc (else z_out's) and is None
    unless write_acc or acc_out is given. out / acc_out are written in place when given (they may
    alias the inputs).
    """
    shape = (-1,) + (1,) * (z_t.dim() - 1)
    (sqrt_a, noise_std, lam, beta, z_base, z_f, z_x0, z_acc,
     acc_acc, acc_f, acc_x0) = (v.reshape(shape) for v in coef.float().unbind(-1))
    z = z_t.float()
    eps_hyb = lam * eps_hat.float() + (1 - lam) * (z - sqrt_a * z0_hat.float()) / noise_std
    f = -0.5 * beta * (z - eps_hyb / noise_std)
    x0_hyb = (z - noise_std * eps_hyb) / sqrt_a
    state = z_t if base is None else base
    acc_f32 = 0.0 if acc is None else acc.float()
    z_next = z_base * state.float() + z_f * f + z_x0 * x0_hyb + z_acc * acc_f32
    acc_next = None
    if write_acc or acc_out is not None:
        acc_next = acc_acc * acc_f32 + acc_f * f + acc_x0 * x0_hyb
        acc_next = _written(acc_next, acc_out, state.dtype if acc is None else acc.dtype)
    return _written(z_next, out, state.dtype), acc_next


def _written(value, out, dtype):
    """`value` copied into `out` when given, else cast to `dtype`."""
    if out is None:
        return value.to(dtype)
    return out.copy_(value)
