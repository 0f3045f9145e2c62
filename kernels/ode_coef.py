"""Per-sample coefficients of the fused ODE update, built on the host with tensor ops only.

The update after one network evaluation is linear in its inputs (z_t, eps_hat, z0_hat, base, acc),
so ``ode_update(z_t, eps_hat, z0_hat, coef, base=None, acc=None)`` computes, per sample b, with
the columns of ``coef[b]`` (fp32, shape (B, 9), named by ``COEF_FIELDS``):

    z_out   = z_z * z_t + z_eps * eps_hat + z_z0 * z0_hat + z_base * base + z_acc * acc
    acc_out = acc_z * z_t + acc_eps * eps_hat + acc_z0 * z0_hat + acc_acc * acc

(base defaults to z_t, acc to 0): five fused multiply-adds and no division. ``ode_coef`` folds the
model and the solver into these columns in float64 and rounds each once to fp32. The model, with
sqrt_a = sqrt(alpha(t)), noise_std = sqrt(1 - alpha(t)), lam the mixing weight at t and beta(t):

    eps_hyb = lam * eps_hat + (1 - lam) * (z_t - sqrt_a * z0_hat) / noise_std  (eq. 18)
    f       = -beta / 2 * (z_t - eps_hyb / noise_std)                         (eq. 13, dz/dt)
    x0_hyb  = (z_t - noise_std * eps_hyb) / sqrt_a                            (data estimate)

and the solver, as coefficients of the model's f and x0_hyb:

    z_out   = z_base * base + z_f * f + z_x0 * x0_hyb + z_acc * acc
    acc_out = acc_acc * acc + acc_f * f + acc_x0 * x0_hyb

The builders below give each solver's use (h = s - t < 0 is the step from t to s):

| use                | base | acc         | z_out                                     | acc_out       |
| ------------------ | ---- | ----------- | ----------------------------------------- | ------------- |
| Euler              | z_t  | -           | z + h f                                   | -             |
| RK stage i < last  | z_n  | sum so far  | z_n + c_(i+1) h f_i                       | acc + b_i f_i |
| RK last stage      | z_n  | sum so far  | z_n + h (acc + b_last f)                  | -             |
| DPM-Solver++(2M)   | z_t  | x0_prev     | r1 z + r2 ((1 + 1/2r) x0 - 1/2r x0_prev)  | x0_hyb        |

(RK: Heun and classical RK4, whose stage i + 1 input uses f_i only; ``RK_TABLEAUS``.)
``solver_table`` lays a whole fixed-step solve out as one row per network evaluation.

Folded in float64, a coefficient that is 0 in the mathematics is 0: under the hybrid
parametrization with c = 1 (lam = alpha) the drift does not depend on z_t, so z_z of an Euler
or RK row is exactly 0, where the unfolded formula cancels two fp32 terms of size beta / 2 |z_t|.

Everything is built with tensor operations on the device of ``t`` (Python numbers enter as kernel
arguments of ``torch.full``): no host-to-device copy, so the builders may run inside a CUDA graph.
"""
from dataclasses import dataclass

import torch

from ecdp.parametrization import mixing_weight
from ecdp.sde import alpha, beta, log_snr

COEF_FIELDS = ("z_z", "z_eps", "z_z0", "z_base", "z_acc", "acc_z", "acc_eps", "acc_z0", "acc_acc")

# nodes c_i (stage times t + c_i h) and weights b_i
RK_TABLEAUS = {
    "heun": ((0.0, 1.0), (0.5, 0.5)),
    "rk4": ((0.0, 0.5, 0.5, 1.0), (1 / 6, 1 / 3, 1 / 3, 1 / 6)),
}


def model_coef(t, param="hybrid", c=1.0):
    """((f_z, f_eps, f_z0), (x0_z, x0_eps, x0_z0)): the drift f and the data estimate x0_hyb as
    linear combinations of (z_t, eps_hat, z0_hat), float64 tensors of t's shape (t in (0, 1])."""
    t = torch.as_tensor(t).double()
    a, lam, half_beta = alpha(t), mixing_weight(t, param, c).double(), 0.5 * beta(t)
    sqrt_a, noise_std = a.sqrt(), (1 - a).sqrt()
    f = (-half_beta * (lam - a) / (1 - a), half_beta * lam / noise_std, -half_beta * (1 - lam) * sqrt_a / (1 - a))
    x0 = (lam / sqrt_a, -lam * noise_std / sqrt_a, 1 - lam)
    return f, x0


def ode_coef(t, *, param="hybrid", c=1.0, z_base=1.0, z_f=0.0, z_x0=0.0, z_acc=0.0,
             acc_acc=0.0, acc_f=0.0, acc_x0=0.0, dtype=torch.float32):
    """The (B, 9) coefficients (COEF_FIELDS) for a network evaluated at per-sample times t (B,).

    The solver's coefficients (of base, f, x0_hyb and acc, see above) are numbers or (B,) tensors;
    they are folded with the model's (``model_coef``) in float64 and the table rounded once to
    `dtype` (fp32 for the kernels; float64 gives the exact table a reference evaluation uses).
    """
    t = torch.as_tensor(t).double()
    (f_z, f_eps, f_z0), (x0_z, x0_eps, x0_z0) = model_coef(t, param, c)
    z_base, z_f, z_x0, z_acc, acc_acc, acc_f, acc_x0 = (
        v.double() if isinstance(v, torch.Tensor) else torch.full_like(t, v)
        for v in (z_base, z_f, z_x0, z_acc, acc_acc, acc_f, acc_x0))
    columns = [z_f * f_z + z_x0 * x0_z, z_f * f_eps + z_x0 * x0_eps, z_f * f_z0 + z_x0 * x0_z0, z_base, z_acc,
               acc_f * f_z + acc_x0 * x0_z, acc_f * f_eps + acc_x0 * x0_eps, acc_f * f_z0 + acc_x0 * x0_z0, acc_acc]
    return torch.stack(torch.broadcast_tensors(*columns), dim=-1).to(dtype)


def euler_coef(t, s, **model):
    """One Euler step from t to s: z_out = z + (s - t) f(z, t)."""
    return ode_coef(t, z_f=s - t, **model)


def rk_coefs(t, s, tableau, **model):
    """[(t_i, coef_i)] for the stages of one RK step from t to s (tableau: a key of RK_TABLEAUS).

    Evaluate the network at (z_i, t_i) with z_1 = z, then
    ``z_(i+1), acc = ode_update(z_i, eps_hat, z0_hat, coef_i, base=z, acc=acc, write_acc=not last)``;
    the last stage's output is the step's result.
    """
    nodes, weights = RK_TABLEAUS[tableau]
    h = s - t
    stages = []
    for i, (node, weight) in enumerate(zip(nodes, weights)):
        t_i = t + node * h
        if i + 1 < len(nodes):
            coef = ode_coef(t_i, z_f=nodes[i + 1] * h, acc_acc=1.0, acc_f=weight, **model)
        else:
            coef = ode_coef(t_i, z_acc=h, z_f=weight * h, **model)
        stages.append((t_i, coef))
    return stages


def dpmpp2m_coef(t, s, t_prev=None, **model):
    """One DPM-Solver++(2M) step from t to s; first order (DDIM) when t_prev is None.

    ``z, x0 = ode_update(z, eps_hat, z0_hat, coef, acc=x0_prev, write_acc=True)``. With
    sqrt_a = sqrt(a), noise_std = sqrt(1 - a), l = log(sqrt_a / noise_std), h = l(s) - l(t),
    r = (l(t) - l(t_prev)) / h: r1 = noise_std(s) / noise_std(t), r2 = -sqrt_a(s) expm1(-h).
    """
    t, s = torch.as_tensor(t).double(), torch.as_tensor(s).double()
    a_t, a_s = alpha(t), alpha(s)
    h = 0.5 * (log_snr(s) - log_snr(t))
    r1 = ((1 - a_s) / (1 - a_t)).sqrt()
    r2 = -a_s.sqrt() * torch.expm1(-h)
    if t_prev is None:
        return ode_coef(t, z_base=r1, z_x0=r2, acc_x0=1.0, **model)
    r = 0.5 * (log_snr(t) - log_snr(torch.as_tensor(t_prev).double())) / h
    return ode_coef(t, z_base=r1, z_x0=r2 * (1 + 0.5 / r), z_acc=-r2 * 0.5 / r, acc_x0=1.0, **model)


@dataclass(frozen=True)
class Stage:
    """How one row of a solver table calls ode_update after its network evaluation."""

    uses_base: bool    # base = the state at the start of the step (RK stages), else z_t
    uses_acc: bool     # acc = the previous row's acc_out
    writes_acc: bool
    ends_step: bool    # the output is the state at the end of a step


def solver_table(solver, ts, *, param="hybrid", c=1.0, dtype=torch.float32):
    """(stages, t, coef): ecdp.sampling's fixed-step solve on the time grid ts, one row per NFE.

    ts: (steps + 1,) decreasing times on the device (float64 recommended). Returns the Stage flags
    of the rows, their network times t (rows,) float64 and coefficients coef (rows, 9) in `dtype`
    (fp32 for the kernels).
    Row k: evaluate the network at (z, t[k]), then ``z, acc = ode_update(z, eps_hat, z0_hat,
    coef[k], base=z_n if uses_base, acc=acc if uses_acc, write_acc=writes_acc)``, and z_n = z
    where the row ends a step. DPM-Solver++(2M) takes its first and last step at first order,
    as ecdp.sampling does. Raises ValueError for a solver without fixed steps.
    """
    steps = len(ts) - 1
    model = dict(param=param, c=c, dtype=dtype)
    rows = []
    for i in range(steps):
        t, s = ts[i], ts[i + 1]
        if solver == "euler":
            rows.append((Stage(False, False, False, True), t, euler_coef(t, s, **model)))
        elif solver in RK_TABLEAUS:
            stages = rk_coefs(t, s, solver, **model)
            last = len(stages) - 1
            rows += [(Stage(True, j > 0, j < last, j == last), t_j, coef)
                     for j, (t_j, coef) in enumerate(stages)]
        elif solver == "dpmpp2m":
            second_order = 0 < i < steps - 1
            coef = dpmpp2m_coef(t, s, ts[i - 1] if second_order else None, **model)
            rows.append((Stage(False, second_order, True, True), t, coef))
        else:
            raise ValueError(f"solver {solver!r} has no fixed steps; choose euler, heun, rk4 or dpmpp2m")
    stages, times, coefs = zip(*rows)
    return stages, torch.stack(times).double(), torch.stack(coefs)
