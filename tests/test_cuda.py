"""On a CUDA GPU: the compiled Triton kernels at the paper model's real shapes, and capture and
replay of every fixed-step solver. Skipped without CUDA (bench/gpu/run.sh runs them on the device)."""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

import ecdp.kernels as kernels  # noqa: E402
import ecdp.nets as nets  # noqa: E402
from ecdp.kernels import reference  # noqa: E402
from ecdp.modelfile import ModelConfig  # noqa: E402
from ecdp.pipeline import SuperResolver  # noqa: E402
from ecdp.sampling import SamplerSpec  # noqa: E402
from ecdp.speed import Speed  # noqa: E402


def paper_gn_sites(lr=64, channels_last=False):
    """(shape, groups, has add_channel, has add) of every GroupNorm call of the paper preset's
    denoiser at LR lr -> HR 4 lr, traced on a meta forward."""
    sites = []

    def hook(x, weight, bias, groups, *, add_channel=None, add=None, eps=1e-5, silu=True):
        sites.append((tuple(x.shape), groups, add_channel is not None, add is not None))
        return reference.group_norm_silu(x, weight, bias, groups, add_channel=add_channel, add=add, eps=eps, silu=silu)

    with torch.device("meta"):
        net = nets.build("paper").eval()
    hr = (4 * lr, 4 * lr)
    with torch.inference_mode():
        cond = net.encode(torch.empty(1, 3, lr, lr, device="meta"), hr)
        nets.GroupNormSiLU.impl = staticmethod(hook)
        try:
            net.denoiser(torch.empty(1, 3, *hr, device="meta"), torch.empty(1, device="meta"), cond)
        finally:
            nets.GroupNormSiLU.impl = staticmethod(reference.group_norm_silu)
    return sorted(set(sites))


SITES = paper_gn_sites() if torch.cuda.is_available() else []


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("batch", [1, 8])
def test_triton_group_norm_at_the_paper_sites(dtype, channels_last, batch):
    g = torch.Generator(device="cuda").manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert len(SITES) > 5
    for (_, C, H, W), groups, has_channel, has_add in SITES:
        shape = (batch, C, H, W)
        x = (torch.randn(shape, device="cuda", generator=g) * 2 + 1).to(dtype).contiguous(memory_format=layout)
        adds = dict(add_channel=torch.randn(batch, C, device="cuda", generator=g).to(dtype) if has_channel else None,
                    add=torch.randn(shape, device="cuda", generator=g).to(dtype).contiguous(memory_format=layout)
                    if has_add else None)
        weight, bias = torch.randn(C, device="cuda", generator=g), torch.randn(C, device="cuda", generator=g)
        got = kernels._triton()[0].group_norm_silu(x, weight, bias, groups, **adds)
        expected = reference.group_norm_silu(x, weight, bias, groups, **adds)
        diff = (got.double() - expected.double()).abs().max().item()
        limit = 1e-4 if dtype == torch.float32 else 2e-2 * expected.double().abs().max().item()
        assert diff <= limit, (shape, groups, diff)


@pytest.mark.parametrize("batch", [1, 8])
def test_triton_ode_update_at_hr_256(batch):
    g = torch.Generator(device="cuda").manual_seed(0)
    ts = torch.linspace(1.0, 1e-3, 4, device="cuda", dtype=torch.float64)
    head = torch.randn(batch, 6, 256, 256, device="cuda", generator=g)
    z, z_n, acc = (torch.randn(batch, 3, 256, 256, device="cuda", generator=g) for _ in range(3))
    for solver in ("euler", "heun", "rk4", "dpmpp2m"):
        stages, _, coef = kernels.solver_table(solver, ts)
        for stage, row in zip(stages, coef):
            kw = dict(base=z_n if stage.uses_base else None, acc=acc if stage.uses_acc else None,
                      write_acc=stage.writes_acc)
            got = kernels._triton()[1].ode_update(z, head[:, :3], head[:, 3:], row.expand(batch, -1), **kw)
            expected = reference.ode_update(z, head[:, :3], head[:, 3:], row.expand(batch, -1), **kw)
            for a, b in zip(got, expected):
                if b is not None:
                    torch.testing.assert_close(a, b, atol=1e-5 * b.abs().max().item(), rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_cuda():
    torch.manual_seed(0)
    net = nets.build("tiny").eval()
    for blk in net.modules():
        if isinstance(blk, nets.ResBlock):
            torch.nn.init.normal_(blk.conv2.weight, std=0.05)
    return net.cuda()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("solver,steps", [("euler", 3), ("heun", 2), ("rk4", 1), ("dpmpp2m", 4)])
def test_cuda_graph_replay_of_every_fixed_step_solver(tiny_cuda, solver, steps, precision):
    """Captured and replayed (channels_last, fused ODE update, Triton GN) equals the same solve run eagerly."""
    g = torch.Generator().manual_seed(1)
    speed = Speed(precision=precision, encoder_precision=precision, channels_last=True, fold_biases=True,
                  triton_norm=True, fused_ode=True, cuda_graphs=True)
    resolver = SuperResolver(tiny_cuda, ModelConfig(sigma=0.2), SamplerSpec(solver=solver, steps=steps), speed)
    with torch.inference_mode():
        for _ in range(2):
            y = torch.rand(2, 3, 16, 16, generator=g).cuda()
            z1 = torch.randn(2, 3, 64, 64, generator=g).cuda()
            torch.testing.assert_close(resolver.run(y, z1)[0], resolver.run(y, z1, replay=False)[0],
                                       atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4", "dpmpp2m"])
def test_cuda_fused_solve_matches_the_unfused_solve(tiny_cuda, solver):
    g = torch.Generator().manual_seed(2)
    y = torch.rand(2, 3, 16, 16, generator=g).cuda()
    z1 = torch.randn(2, 3, 64, 64, generator=g).cuda()
    config = ModelConfig(sigma=0.2)
    with torch.inference_mode():
        fused = SuperResolver(tiny_cuda, config, SamplerSpec(solver=solver, steps=3), Speed(fused_ode=True)).run(y, z1)[0]
        plain = SuperResolver(tiny_cuda, config, SamplerSpec(solver=solver, steps=3)).run(y, z1)[0]
    torch.testing.assert_close(fused, plain, atol=config.sigma * 2e-4, rtol=2e-4)
