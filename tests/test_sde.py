import torch

from ecdp import sde


def test_alpha_and_beta_defaults():
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(sde.beta(t), torch.tensor([0.1, 10.05, 20.0], dtype=torch.float64))
    expected = torch.exp(-(0.1 * t + 0.5 * 19.9 * t**2))
    assert torch.allclose(sde.alpha(t), expected)
    # alpha' = -beta alpha (eq. 11)
    h = 1e-6
    deriv = (sde.alpha(t + h) - sde.alpha(t - h)) / (2 * h)
    assert torch.allclose(deriv, -sde.beta(t) * sde.alpha(t), rtol=1e-6)


def test_proposition_1_non_gaussian_z0():
    """Eq. 6, 7: a z_0 with mean 0 and variance 1 (here uniform and skewed) keeps both for every t."""
    g = torch.Generator().manual_seed(0)
    n = 400_000
    uniform = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 12**0.5
    skewed = torch.distributions.Exponential(1.0).sample((n,)).double() - 1.0
    for z0 in (uniform, skewed):
        for t in torch.linspace(0.0, 1.0, 11, dtype=torch.float64):
            eps = torch.randn(n, generator=g, dtype=torch.float64)
            zt = sde.marginal_sample(z0, t, eps)
            assert abs(zt.mean().item()) < 0.01
            assert abs(zt.var().item() - 1.0) < 0.01


def test_proposition_1_in_x_space():
    """In x: mean mu(y), variance sigma^2 for every t."""
    g = torch.Generator().manual_seed(1)
    mu, sigma = 0.4, 0.07
    x0 = mu + sigma * ((torch.rand(300_000, generator=g, dtype=torch.float64) - 0.5) * 12**0.5)
    for t in (0.1, 0.5, 0.9):
        eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        xt = mu + sigma * sde.marginal_sample((x0 - mu) / sigma, torch.tensor(t, dtype=torch.float64), eps)
        assert abs(xt.mean().item() - mu) < 0.01 * mu
        assert abs(xt.var().item() - sigma**2) < 0.01 * sigma**2


def test_log_snr_grid_roundtrip():
    t = torch.linspace(1e-3, 1.0, 50, dtype=torch.float64)
    assert torch.allclose(sde.t_from_log_snr(sde.log_snr(t)), t, atol=1e-12)
    grid = sde.time_grid(10, spacing="logsnr")
    assert grid[0] == 1.0 and abs(grid[-1].item() - 1e-3) < 1e-15
    steps = sde.log_snr(grid).diff()
    assert torch.allclose(steps, steps[0].expand_as(steps), rtol=1e-9)
    assert torch.all(sde.time_grid(10, spacing="uniform").diff() < 0)
