"""Per-sample coefficients of the fused ODE update, built on the host with tensor ops only.

``ode_update(z_t, eps_hat, z0_hat, coef, base=None, acc=None)`` computes, per sample b, with the
columns of ``coef[b]`` (fp32, shape (B, 11), columns named by ``COEF_FIELDS``):

    eps_hyb = lam * eps_hat + (1 - lam) * (z_t - sqrt_a * z0_hat) / sigma      (eq. 18)
    f       = -beta / 2 * (z_t - eps_hyb / sigma)                             (eq. 13, dz/dt)
    x0_hyb  = (z_t - sigma * eps_hyb) / sqrt_a                                (data estimate)
    z_out   = z_base * base + z_f * f + z_x0 * x0_hyb + z_acc * acc           (base defaults to z_t)
    acc_out = acc_acc * acc + acc_f * f + acc_x0 * x0_hyb                     (acc defaults to 0)

with sqrt_a = sqrt(alpha(t)), sigma = sqrt(1 - alpha(t)), lam the mixing weight at t and beta(t).
The builders below give each solver's use (h = s - t < 0 is the step from t to s):

| use                | base | acc         | z_out                                     | acc_out       |
| ------------------ | ---- | ----------- | ----------------------------------------- | ------------- |
| Euler              | z_t  | -           | z + h f                                   | -             |
| RK stage i < last  | z_n  | sum so far  | z_n + c_(i+1) h f_i                       | acc + b_i f_i |
| RK last stage      | z_n  | sum so far  | z_n + h (acc + b_last f)                  | -             |
| DPM-Solver++(2M)   | z_t  | x0_prev     | r1 z + r2 ((1 + 1/2r) x0 - 1/2r x0_prev)  | x0_hyb        |

(RK: Heun and classical RK4, whose stage i + 1 input uses f_i only; ``RK_TABLEAUS``.)
"""
import torch

from ecdp.parametrization import mixing_weight
from ecdp.sde import alpha, beta, log_snr

COEF_FIELDS = ("sqrt_a", "sigma", "lam", "beta",
               "z_base", "z_f", "z_x0", "z_acc", "acc_acc", "acc_f", "acc_x0")

# nodes c_i (stage times t + c_i h) and weights b_i
RK_TABLEAUS = {
    "heun": ((0.0, 1.0), (0.5, 0.5)),
    "rk4": ((0.0, 0.5, 0.5, 1.0), (1 / 6, 1 / 3, 1 / 3, 1 / 6)),
}


def ode_coef(t, *, param="hybrid", c=1.0, z_base=1.0, z_f=0.0, z_x0=0.0, z_acc=0.0,
             acc_acc=0.0, acc_f=0.0, acc_x0=0.0):
    """The (B, 11) fp32 coefficients for a network evaluated at per-sample times t (B,).

    The update coefficients are numbers or (B,) tensors; the model ones (sqrt_a, sigma, lam, beta)
    come from t in float64, so sigma stays accurate near t = 0.
    """
    t = torch.as_tensor(t).double()
    a = alpha(t)
    columns = [a.sqrt(), (1 - a).sqrt(), mixing_weight(t, param, c), beta(t),
               z_base, z_f, z_x0, z_acc, acc_acc, acc_f, acc_x0]
    columns = [torch.as_tensor(v, dtype=torch.float64, device=t.device) for v in columns]
    return torch.stack(torch.broadcast_tensors(*columns), dim=-1).float()


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
    alpha_s = sqrt(a), sigma_s = sqrt(1 - a), l = log(alpha_s / sigma_s), h = l(s) - l(t),
    r = (l(t) - l(t_prev)) / h: r1 = sigma_s(s) / sigma_s(t), r2 = -alpha_s(s) expm1(-h).
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
