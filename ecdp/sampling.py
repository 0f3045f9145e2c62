"""Probability-flow samplers (eq. 13) that call nothing but the model's noise estimate.

``model(z_t, t, cond) -> eps_hyb`` with ``t`` of shape (B,): ``ecdp.parametrization.HybridDenoiser``
around the denoiser contract. Fixed-step solvers run
on a precomputed time grid and never synchronize with the host inside the step loop.
"""
import functools

import torch
import torch.utils.checkpoint

from ecdp.choices import EVALS_PER_STEP, SOLVERS
from ecdp.parametrization import data_estimate
from ecdp.sde import alpha, log_snr, probability_flow_drift, time_grid


def solve(model, z1, cond, *, solver, steps=None, grid="uniform", atol=1e-3, rtol=1e-3, t_end=1e-3,
          callback=None, checkpoint=False):
    """Integrate the probability-flow ODE from z1 at t = 1 down to t_end; return (z_end, nfe).

    callback(), when given, is called after every step of a fixed-step solver and after every
    network evaluation of dopri5 (to show progress; it sees nothing of the state).
    checkpoint=True (fixed-step solvers) keeps no activations for the backward pass: each step is
    recomputed from its input state there (torch.utils.checkpoint), so the gradient is exactly that
    of the discrete solve (not the continuous adjoint's approximation) and the memory that of one
    step, whatever the number of steps: the adjoint of the quality loss (eq. 19).
    """
    eps_fn = noise_fn(model, cond)
    if solver == "dopri5":
        if checkpoint:
            raise ValueError("checkpointed steps need a fixed-step solver; dopri5 chooses its steps at run time")
        return _solve_adaptive(eps_fn, z1, t_end, atol, rtol, callback)
    if solver not in EVALS_PER_STEP:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    if not steps or steps < 1:
        raise ValueError(f"solver {solver!r} needs a positive number of steps")
    ts = time_grid(steps, t_end=t_end, spacing=grid, dtype=z1.dtype, device=z1.device)
    run = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False) if checkpoint else _call
    if solver == "dpmpp2m":
        return _solve_dpmpp2m(eps_fn, z1, ts, run, callback), steps
    step = ONE_STEP_SOLVERS[solver]
    drift = drift_fn(eps_fn)
    z = z1
    for i in range(steps):
        z = run(step, drift, z, ts[i], ts[i + 1])
        if callback:
            callback()
    return z, steps * EVALS_PER_STEP[solver]


def _call(fn, *args):
    return fn(*args)


def noise_fn(model, cond):
    """eps_hyb(z, t) of the model for a scalar t, conditioned on cond."""
    def eps_fn(z, t):
        return model(z, t.expand(z.shape[0]), cond)
    return eps_fn


def drift_fn(eps_fn):
    """The probability-flow drift f(z, t) for a noise estimate eps_fn(z, t)."""
    def drift(z, t):
        return probability_flow_drift(z, t.expand(z.shape[0]), eps_fn(z, t))
    return drift


def euler_step(f, z, t, s):
    return z + (s - t) * f(z, t)


def heun_step(f, z, t, s):
    h = s - t
    k1 = f(z, t)
    k2 = f(z + h * k1, s)
    return z + 0.5 * h * (k1 + k2)


def rk4_step(f, z, t, s):
    h = s - t
    k1 = f(z, t)
    k2 = f(z + 0.5 * h * k1, t + 0.5 * h)
    k3 = f(z + 0.5 * h * k2, t + 0.5 * h)
    k4 = f(z + h * k3, s)
    return z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


ONE_STEP_SOLVERS = {"euler": euler_step, "heun": heun_step, "rk4": rk4_step}


def _solve_dpmpp2m(eps_fn, z, ts, run, callback=None):
    """DPM-Solver++(2M) on the data prediction implied by the noise estimate.

    With sqrt_a = sqrt(a), noise_std = sqrt(1 - a), DPM-Solver's lambda = log(sqrt_a / noise_std) (half
    the log-SNR) and h the step in lambda: z' = noise_std'/noise_std z - sqrt_a' (e^-h - 1) D, where D
    is the current data estimate on the first and the last step, and its second-order extrapolation
    from the previous one between them (the last step, the longest in lambda, is taken at first
    order as DPM-Solver++ does). run(fn, *args) calls each step (solve's checkpointing).
    """
    a = alpha(ts)
    sqrt_a, noise_std, half_log_snr = a.sqrt(), (1 - a).sqrt(), 0.5 * log_snr(ts)
    steps = len(ts) - 1

    def step(i, z, z0_prev):
        z0 = data_estimate(z, ts[i].expand(z.shape[0]), eps_fn(z, ts[i]))
        h = half_log_snr[i + 1] - half_log_snr[i]
        d = z0
        if 0 < i < steps - 1:
            r = (half_log_snr[i] - half_log_snr[i - 1]) / h
            d = (1 + 0.5 / r) * z0 - (0.5 / r) * z0_prev
        return noise_std[i + 1] / noise_std[i] * z - sqrt_a[i + 1] * torch.expm1(-h) * d, z0

    z0_prev = None
    for i in range(steps):
        z, z0_prev = run(step, i, z, z0_prev)
        if callback:
            callback()
    return z


def _solve_adaptive(eps_fn, z1, t_end, atol, rtol, callback=None):
    """torchdiffeq dopri5 from t = 1 to t_end, counting network evaluations.

    A rejected step may evaluate the drift outside [t_end, 1], where alpha(t) > 1 for t < 0:
    the drift is evaluated at t clamped to that interval.
    """
    nfe = 0
    drift_at = drift_fn(eps_fn)

    def drift(t, z):
        nonlocal nfe
        nfe += 1
        if callback:
            callback()
        return drift_at(z, t.clamp(t_end, 1.0))

    from torchdiffeq import odeint   # imports scipy (0.2 s): only when dopri5 runs

    ts = torch.tensor([1.0, t_end], dtype=z1.dtype, device=z1.device)
    z = odeint(drift, z1, ts, method="dopri5", atol=atol, rtol=rtol)[-1]
    return z, nfe
