import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ecdp.errors import UserError
from ecdp.features import VGG19Features, feature_map
from ecdp.losses import quality_loss, score_matching_loss
from ecdp.sampling import SamplerSpec
from ecdp.nets import build
from ecdp.resize import downscale, upscale
from ecdp.sde import alpha
from oracle import GaussianOracle
from helpers import randomize_zero_convs

BENCH = Path(__file__).parents[1] / "bench" / "adjoint_memory.py"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions run faster on one thread, and far faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(dtype=torch.float32):
    torch.manual_seed(0)
    net = build("tiny").to(dtype)
    randomize_zero_convs(net)
    return net


def _pair(dtype=torch.float32, batch=1, size=16):
    """(y, x, mu) at scale 4."""
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(2), dtype=dtype)
    y = downscale(x, 4)
    return y, x, upscale(y, 4)


def test_score_matching_on_gaussian_oracle_matches_closed_form():
    """The exact denoiser leaves Var(eps | z_t) + Var(z0 | z_t) = v / (a v + 1 - a) per pixel."""
    oracle = GaussianOracle()
    g = torch.Generator().manual_seed(0)
    z0 = oracle.m + oracle.v**0.5 * torch.randn(200_000, 1, 1, 1, generator=g, dtype=torch.float64)
    loss = score_matching_loss(oracle, z0, None, generator=g)
    t = torch.linspace(1e-5, 1, 100_001, dtype=torch.float64)
    a = alpha(t)
    expected = torch.trapezoid(oracle.v / (a * oracle.v + 1 - a), t) / (1 - 1e-5)
    assert abs(loss.item() / expected.item() - 1) < 0.02


def test_score_matching_is_seeded_positive_and_reaches_every_parameter():
    net = _tiny()
    y, x, mu = _pair(batch=2)
    z0 = (x - mu) / 0.1
    cond = net.encode(y, x.shape[-2:])
    loss = score_matching_loss(net, z0, cond, generator=torch.Generator().manual_seed(0))
    again = score_matching_loss(net, z0, cond, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0 and torch.equal(loss, again)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4", "dpmpp2m"])
def test_adjoint_gradient_equals_direct_backpropagation(solver):
    net = _tiny(torch.float64)
    y, x, mu = _pair(torch.float64)

    def gradient(adjoint):
        net.zero_grad(set_to_none=True)
        loss = quality_loss(net, y, x, mu, 0.2, net.encode(y, x.shape[-2:]), feature_map("pixel"),
                            sampler=SamplerSpec(solver=solver, steps=3), adjoint=adjoint,
                            generator=torch.Generator().manual_seed(1))
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in net.parameters()])

    loss_adjoint, g_adjoint = gradient(adjoint=True)
    loss_direct, g_direct = gradient(adjoint=False)
    assert torch.equal(loss_adjoint, loss_direct)
    assert ((g_adjoint - g_direct).norm() / g_direct.norm()).item() < 1e-4
    assert all(p.grad.abs().sum() > 0 for p in net.encoder.parameters())


def test_adjoint_under_autocast_recomputes_in_the_forward_precision():
    """Training on CUDA runs the loss under bf16 autocast; the adjoint's backward must replay each
    step in the same precision (autocast is off in a backward pass unless restored): without it the
    replay mixes bf16 features with fp32 weights and fails."""
    net = _tiny()
    y, x, mu = _pair()

    def gradient(adjoint):
        net.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = quality_loss(net, y, x, mu, 0.2, net.encode(y, x.shape[-2:]), feature_map("pixel"),
                                sampler=SamplerSpec(solver="heun", steps=2), adjoint=adjoint,
                                generator=torch.Generator().manual_seed(1))
        loss.backward()
        return torch.cat([p.grad.flatten() for p in net.parameters()])

    g_adjoint, g_direct = gradient(adjoint=True), gradient(adjoint=False)
    assert ((g_adjoint - g_direct).norm() / g_direct.norm()).item() < 2e-2   # bf16 rounding


def test_adjoint_rejects_the_adaptive_solver():
    net = _tiny()
    y, x, mu = _pair()
    with pytest.raises(ValueError, match="adjoint=False"):
        quality_loss(net, y, x, mu, 0.2, None, feature_map("pixel"), sampler=SamplerSpec(solver="dopri5", steps=2))


@pytest.mark.parametrize("solver", ["euler", "dpmpp2m"])
def test_adjoint_memory_does_not_grow_with_steps(solver):
    command = [sys.executable, str(BENCH), "--steps", "4,32", "--solver", solver, "--size", "32", "--json"]
    peaks = json.loads(subprocess.run(command, check=True, capture_output=True, text=True, timeout=600).stdout)
    adjoint, direct = peaks["adjoint"], peaks["direct"]
    assert adjoint["32"] < 1.1 * adjoint["4"], peaks
    assert direct["32"] > 2 * direct["4"], peaks


def test_vgg19_without_weights_names_the_expected_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("ECDP_VGG19_WEIGHTS", raising=False)
    with pytest.raises(UserError) as error:
        feature_map("vgg19")
    message = str(error.value)
    assert str(tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth") in message
    assert "\n" not in message and ". " not in message and message.endswith(".")


def test_vgg19_loads_weights_and_gives_conv5_4_features(tmp_path, monkeypatch):
    torch.manual_seed(0)
    reference = VGG19Features()
    state = {f"features.{key}": value for key, value in reference.features.state_dict().items()}
    path = tmp_path / "vgg19.safetensors"
    save_file({**state, "classifier.6.bias": torch.zeros(1000)}, path)
    monkeypatch.setenv("ECDP_VGG19_WEIGHTS", str(path))
    vgg = feature_map("vgg19")
    image = torch.rand(1, 3, 32, 48)
    features = vgg(image)
    assert features.shape == (1, 512, 2, 3)
    assert torch.allclose(features, reference(image), rtol=0, atol=1e-6)
    assert not vgg.training and not any(p.requires_grad for p in vgg.parameters())


def test_vgg19_rejects_wrong_weights(tmp_path):
    path = tmp_path / "wrong.safetensors"
    save_file({"features.0.weight": torch.zeros(64, 3, 1, 1)}, path)
    with pytest.raises(UserError, match="features.0.weight"):
        feature_map("vgg19", weights=path)
