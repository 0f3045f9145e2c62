"""Probability-flow samplers (eq. 13) that call nothing but the model's noise estimate.

``model(z_t, t, cond) -> eps_hyb`` with ``t`` of shape (B,): ``ecdp.parametrization.HybridDenoiser``
around the denoiser contract. ``SamplerSpec`` says how to solve (solver, steps, grid, tolerances,
t_end) and is checked once, when it is made. Fixed-step solvers run on a precomputed time grid
and never synchronize with the host inside the step loop.
"""
import functools
from typing import Callable
from dataclasses import dataclass

import torch
import torch.utils.checkpoint

from ecdp.bounds import STEPS, TOLERANCE, Range
from ecdp.choices import EVALS_PER_STEP, GRIDS, SOLVERS
from ecdp.parametrization import data_estimate
from ecdp.sde import alpha, log_snr, probability_flow_drift, time_grid


@dataclass(frozen=True)
class SamplerSpec:
    """How the probability-flow ODE is solved from t = 1 down to t_end; checked when made.

    solver: one of ``ecdp.choices.SOLVERS``; steps: the steps of a fixed-step solver (1 to
    ``ecdp.bounds.MAX_STEPS``; dopri5 ignores it); grid: "uniform" in t or "logsnr"
    (``ecdp.sde.time_grid``); atol, rtol: dopri5's tolerances (``ecdp.bounds.TOLERANCE``); t_end:
    where the solve stops, in (0, 1) and not 0 in float32. The defaults are those of
    a model config that names no sampler (``ModelConfig``); the paper samples with an adaptive
    Runge-Kutta solver (dopri5 here). Raises ValueError, in one sentence, for any value outside those.
    """

    solver: str = "heun"
    steps: int = 10
    grid: str = "logsnr"
    atol: float = 1e-3
    rtol: float = 1e-3
    t_end: float = 1e-3

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose one of {', '.join(SOLVERS)}")
        if self.grid not in GRIDS:
            raise ValueError(f"unknown time grid {self.grid!r}; choose one of {', '.join(GRIDS)}")
        if self.fixed_step and (type(self.steps) is not int or self.steps not in STEPS):
            raise ValueError(f"solver {self.solver} takes a whole number of steps {STEPS}, got {self.steps!r}")
        for name in ("atol", "rtol"):
            if getattr(self, name) not in TOLERANCE:
                raise ValueError(f"the tolerance {name} must be {TOLERANCE.describe(float(getattr(self, name)))}, "
                                 f"got {getattr(self, name)!r}")
        if self.t_end not in Range(0, 1, low_open=True, high_open=True):
            raise ValueError(f"t_end must lie between 0 and 1 (and not be 0 in float32), got {self.t_end!r}")

    @classmethod
    def of(cls, config, **overrides) -> "SamplerSpec":
        """The sampler of a model config (its solver, steps and grid), with every override that is
        not None in its place; raises ValueError as SamplerSpec does."""
        base = dict(solver=config.solver, steps=config.steps, grid=config.grid)
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})

    @property
    def fixed_step(self) -> bool:
        """Whether the steps are fixed ahead (every solver but dopri5)."""
        return self.solver != "dopri5"

    @property
    def nfe(self) -> int | None:
        """Network evaluations of one solve: steps x evaluations per step, or None for dopri5."""
        return self.steps * EVALS_PER_STEP[self.solver] if self.fixed_step else None

    def require_fixed_step(self, what: str) -> None:
        """ValueError unless the solver is a fixed-step one; `what` names what needs it."""
        if not self.fixed_step:
            raise ValueError(f"{what} needs a fixed-step solver ({', '.join(EVALS_PER_STEP)}); "
                             "dopri5 chooses its steps at run time")

    def times(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """The decreasing times t_0 = 1 > ... > t_steps = t_end of a fixed-step solve, (steps + 1,)."""
        return time_grid(self.steps, t_end=self.t_end, spacing=self.grid, dtype=dtype, device=device)


def solve(model: Callable, z1: torch.Tensor, cond, sampler: SamplerSpec, *, callback: Callable[[], None] | None = None,
          checkpoint: bool = False) -> tuple[torch.Tensor, int | None]:
    """Integrate the probability-flow ODE from z1 (B, C, H, W) at t = 1 down to sampler.t_end;
    return (z_end, nfe), z_end like z1.

    callback(), when given, is called after every step of a fixed-step solver and after every
    network evaluation of dopri5 (to show progress; it sees nothing of the state).
    checkpoint=True (fixed-step solvers) keeps no activations for the backward pass: each step is
    recomputed from its input state there (torch.utils.checkpoint), so the gradient is exactly that
    of the discrete solve (not the continuous adjoint's approximation) and the memory that of one
    step, whatever the number of steps: the adjoint of the quality loss (eq. 19). Raises
    ValueError for checkpoint=True with dopri5.
    """
    if not sampler.fixed_step:
        if checkpoint:
            sampler.require_fixed_step("checkpointed steps")
        return _solve_adaptive(model, z1, cond, sampler, callback)
    ts = sampler.times(dtype=z1.dtype, device=z1.device)
    if sampler.solver == "dpmpp2m":
        return _solve_dpmpp2m(model, z1, cond, ts, checkpoint, callback), sampler.nfe
    step = _checkpointed(ONE_STEP_SOLVERS[sampler.solver], checkpoint)
    drift = drift_fn(model, cond)
    z = z1
    for i in range(sampler.steps):
        z = step(drift, z, ts[i], ts[i + 1])
        if callback:
            callback()
    return z, sampler.nfe


def _checkpointed(fn, checkpoint):
    """fn, or with checkpoint=True fn whose activations are recomputed in the backward pass."""
    return functools.partial(torch.utils.checkpoint.checkpoint, fn, use_reentrant=False) if checkpoint else fn


def drift_fn(model: Callable, cond) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The probability-flow drift f(z, t) of the model's noise estimate, conditioned on cond, for a scalar t."""
    def drift(z, t):
        t = t.expand(z.shape[0])
        return probability_flow_drift(z, t, model(z, t, cond))
    return drift


def euler_step(f: Callable, z: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """One Euler step of dz/dt = f(z, t) from t to s."""
    return z + (s - t) * f(z, t)


def heun_step(f: Callable, z: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """One Heun (explicit trapezoidal, 2 evaluations) step from t to s."""
    h = s - t
    k1 = f(z, t)
    k2 = f(z + h * k1, s)
    return z + 0.5 * h * (k1 + k2)


def rk4_step(f: Callable, z: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """One classical Runge-Kutta step (4 evaluations) from t to s."""
    h = s - t
    k1 = f(z, t)
    k2 = f(z + 0.5 * h * k1, t + 0.5 * h)
    k3 = f(z + 0.5 * h * k2, t + 0.5 * h)
    k4 = f(z + h * k3, s)
    return z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


ONE_STEP_SOLVERS = {"euler": euler_step, "heun": heun_step, "rk4": rk4_step}


def _solve_dpmpp2m(model, z, cond, ts, checkpoint=False, callback=None):
    """DPM-Solver++(2M) on the data prediction implied by the noise estimate.

    With sqrt_a = sqrt(a), noise_std = sqrt(1 - a), DPM-Solver's lambda = log(sqrt_a / noise_std) (half
    the log-SNR) and h the step in lambda: z' = noise_std'/noise_std z - sqrt_a' (e^-h - 1) D, where D
    is the current data estimate on the first and the last step, and its second-order extrapolation
    from the previous one between them (the last step, the longest in lambda, is taken at first
    order as DPM-Solver++ does). checkpoint as for solve.
    """
    a = alpha(ts)
    sqrt_a, noise_std, half_log_snr = a.sqrt(), (1 - a).sqrt(), 0.5 * log_snr(ts)
    steps = len(ts) - 1

    def step(i, z, z0_prev):
        t = ts[i].expand(z.shape[0])
        z0 = data_estimate(z, t, model(z, t, cond))
        h = half_log_snr[i + 1] - half_log_snr[i]
        d = z0
        if 0 < i < steps - 1:
            r = (half_log_snr[i] - half_log_snr[i - 1]) / h
            d = (1 + 0.5 / r) * z0 - (0.5 / r) * z0_prev
        return noise_std[i + 1] / noise_std[i] * z - sqrt_a[i + 1] * torch.expm1(-h) * d, z0

    z0_prev, step = None, _checkpointed(step, checkpoint)
    for i in range(steps):
        z, z0_prev = step(i, z, z0_prev)
        if callback:
            callback()
    return z


def _solve_adaptive(model, z1, cond, sampler, callback=None):
    """torchdiffeq dopri5 from t = 1 to t_end, counting network evaluations.

    A rejected step may evaluate the drift outside [t_end, 1], where alpha(t) > 1 for t < 0:
    the drift is evaluated at t clamped to that interval.
    """
    nfe = 0
    drift_at = drift_fn(model, cond)

    def drift(t, z):
        nonlocal nfe
        nfe += 1
        if callback:
            callback()
        return drift_at(z, t.clamp(sampler.t_end, 1.0))

    from torchdiffeq import odeint   # imports scipy (0.2 s): only when dopri5 runs

    ts = torch.tensor([1.0, sampler.t_end], dtype=z1.dtype, device=z1.device)
    z = odeint(drift, z1, ts, method="dopri5", atol=sampler.atol, rtol=sampler.rtol)[-1]
    return z, nfe
