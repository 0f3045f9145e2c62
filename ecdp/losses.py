"""Training losses in normalized residual space: score matching and the image quality loss.

``net(z_t, t, cond) -> (eps_hat, z0_hat)`` is the denoiser contract; ``z0 = (x - mu) / sigma``.
"""
import functools

import torch

from ecdp.sampling import ONE_STEP_SOLVERS, drift_fn, noise_fn, solve
from ecdp.sde import marginal_sample, time_grid

ADJOINT_SOLVERS = ONE_STEP_SOLVERS


def batch_noise(draw, shape, *, generator=None, batch_slice=(0, 1), dtype=None, device=None):
    """draw(shape) (torch.rand or torch.randn) for this process's part of a global batch.

    batch_slice (rank, world): the batch of `shape[0]` samples is the rank-th of `world` equal parts
    of the global batch; the noise of the whole global batch is drawn from `generator` and this
    part returned, so each sample's noise depends on its place in the global batch, not on how many
    processes share it (world 1 draws exactly `draw(shape)`).
    """
    rank, world = batch_slice
    full = draw((shape[0] * world, *shape[1:]), generator=generator, dtype=dtype, device=device)
    return full[rank * shape[0]:(rank + 1) * shape[0]]


def score_matching_loss(net, z0, cond, *, t_eps=1e-5, generator=None, batch_slice=(0, 1),
                        param_weights=(1.0, 1.0)):
    """Eq. 16: mean over pixels of w_eps |eps_hat - eps|^2 + w_z0 |z0_hat - z0|^2.

    t ~ U[t_eps, 1] per sample, eps ~ N(0, I), z_t = sqrt(a) z0 + sqrt(1 - a) eps; param_weights
    (w_eps, w_z0) weigh the two heads, equal in the paper. The noise is drawn by batch_noise.
    """
    noise = functools.partial(batch_noise, generator=generator, batch_slice=batch_slice, dtype=z0.dtype,
                              device=z0.device)
    t = t_eps + (1 - t_eps) * noise(torch.rand, (z0.shape[0],))
    eps = noise(torch.randn, z0.shape)
    eps_hat, z0_hat = net(marginal_sample(z0, t, eps), t, cond)
    w_eps, w_z0 = param_weights
    return w_eps * (eps_hat - eps).square().mean() + w_z0 * (z0_hat - z0).square().mean()


def quality_loss(net, y, x, mu, sigma, cond, feature, *, solver="heun", steps=10, grid="logsnr",
                 param="hybrid", c=1.0, t_end=1e-3, adjoint=True, generator=None, batch_slice=(0, 1)):
    """Eq. 19: mean |F(SR) - F(x)|, SR = clamp(mu + sigma z_end, 0, 1), z_end the probability-flow
    solve from z1 ~ N(0, I) at t = 1 to t_end.

    Gradients reach the parameters of `net` and `cond` (so the encoder trains through it); `cond`
    None encodes `y` here. adjoint=False backpropagates through `ecdp.sampling.solve` (any solver);
    adjoint=True uses the discrete adjoint of `_DiscreteAdjoint` (euler, heun, rk4). z1 is drawn by
    batch_noise (eq. 12).
    """
    cond = net.encode(y) if cond is None else cond
    z1 = batch_noise(torch.randn, x.shape, generator=generator, batch_slice=batch_slice, dtype=x.dtype,
                     device=x.device)
    options = dict(solver=solver, steps=steps, grid=grid, param=param, c=c, t_end=t_end)
    z_end = adjoint_solve(net, z1, cond, **options) if adjoint else solve(net, z1, cond, **options)[0]
    sr = (mu + sigma * z_end).clamp(0, 1)
    with torch.no_grad():
        target = feature(x)
    return (feature(sr) - target).abs().mean()


def adjoint_solve(net, z1, cond, *, solver, steps, grid="logsnr", param="hybrid", c=1.0, t_end=1e-3):
    """z_end of ``solve(net, z1, cond, ...)`` for a one-step fixed-step solver, differentiated by
    the discrete adjoint: activation memory of one step, whatever the number of steps."""
    if solver not in ADJOINT_SOLVERS:
        raise ValueError(f"the adjoint supports the solvers {', '.join(ADJOINT_SOLVERS)}, not {solver!r}; "
                         "use adjoint=False for the others")
    if not steps or steps < 1:
        raise ValueError(f"solver {solver!r} needs a positive number of steps")
    ts = time_grid(steps, t_end=t_end, spacing=grid, dtype=z1.dtype, device=z1.device)
    params = [p for p in net.parameters() if p.requires_grad]

    def make_drift(cond):
        return drift_fn(noise_fn(net, cond, param, c))

    return _DiscreteAdjoint.apply(z1, cond, ts, ADJOINT_SOLVERS[solver], make_drift, *params)


class _DiscreteAdjoint(torch.autograd.Function):
    """Fixed-step solve whose backward replays one step at a time.

    The forward keeps only the states z_i on the time grid (one image each, no activations). The
    backward walks the grid in reverse: it recomputes step i from z_i with gradients on and applies
    ``torch.autograd.grad`` of that single step to the incoming adjoint, accumulating the gradients
    of `cond` and of the parameters. This is the exact gradient of the discrete solve (equal to
    direct backpropagation up to rounding), unlike the continuous adjoint (torchdiffeq's
    ``odeint_adjoint``), whose backward ODE solve only approximates it at a few steps. Multistep
    DPM-Solver++(2M) would need its previous data estimate in the state, so it is left out.
    """

    @staticmethod
    def forward(ctx, z1, cond, ts, step, make_drift, *params):
        drift = make_drift(cond)
        states = [z1]
        for i in range(len(ts) - 1):
            states.append(step(drift, states[-1], ts[i], ts[i + 1]))
        ctx.save_for_backward(ts, cond, *states[:-1])
        ctx.step, ctx.make_drift, ctx.params = step, make_drift, params
        device = z1.device.type
        ctx.autocast = dict(device_type=device, enabled=torch.is_autocast_enabled(device),
                            dtype=torch.get_autocast_dtype(device))
        return states[-1]

    @staticmethod
    def backward(ctx, grad_z):
        ts, cond, *states = ctx.saved_tensors
        with_cond = ctx.needs_input_grad[1]
        cond = cond.detach().requires_grad_() if with_cond else cond
        inputs = ([cond] if with_cond else []) + list(ctx.params)
        drift = ctx.make_drift(cond)
        totals = [None] * len(inputs)
        for i in reversed(range(len(states))):
            z = states[i].detach().requires_grad_()
            with torch.enable_grad(), torch.autocast(**ctx.autocast):   # recompute as the forward ran
                z_next = ctx.step(drift, z, ts[i], ts[i + 1])
            grad_z, *grads = torch.autograd.grad(z_next, [z, *inputs], grad_z, allow_unused=True)
            totals = [g if t is None else t if g is None else t.add_(g) for t, g in zip(totals, grads)]
        grad_cond = totals.pop(0) if with_cond else None
        return grad_z, grad_cond, None, None, None, *totals
