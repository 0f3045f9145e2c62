"""On a CUDA GPU: the compiled Triton kernels at the paper model's real shapes, and capture and
replay of every fixed-step solver. Skipped without CUDA (bench/gpu/run.sh runs them on the device)."""
import copy

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

import ecdp.kernels as kernels  # noqa: E402
import ecdp.nets as nets  # noqa: E402
from ecdp.acceleration import fused_solve  # noqa: E402
from ecdp.kernels import reference  # noqa: E402
from ecdp.modelfile import ModelConfig  # noqa: E402
from ecdp.pipeline import SuperResolver  # noqa: E402
from ecdp.sampling import SamplerSpec, solve  # noqa: E402
from ecdp.speed import Speed  # noqa: E402
from helpers import randomize_zero_convs  # noqa: E402


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


GN_KERNELS = {"two_pass": lambda: kernels._triton()[0].group_norm_silu, "slab": lambda: kernels.group_norm_silu_slab}


@pytest.mark.parametrize("kernel", GN_KERNELS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("batch", [1, 8])
def test_triton_group_norm_at_the_paper_sites(dtype, channels_last, batch, kernel):
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
        got = GN_KERNELS[kernel]()(x, weight, bias, groups, **adds)
        expected = reference.group_norm_silu(x, weight, bias, groups, **adds)
        diff = (got.double() - expected.double()).abs().max().item()
        limit = 1e-4 if dtype == torch.float32 else 2e-2 * expected.double().abs().max().item()
        assert diff <= limit, (shape, groups, diff)


U32 = 2.0**-24   # unit roundoff of fp32


def _float64(value, transform=lambda t: t):
    return None if value is None else transform(value.double())


@pytest.mark.parametrize("batch", [1, 8])
def test_triton_ode_update_at_hr_256(batch):
    """The kernel and the fp32 reference against the update evaluated in float64 with float64
    coefficients. Per element, the update sums <= 5 terms c_i x_i: each carries the fp32 rounding of
    its coefficient (u |c_i x_i|), and each of the <= 5 multiply-adds (fused on the GPU; 5 products
    and 4 sums in the reference) one rounding of a partial sum (<= u sum|c_i x_i|), so both are
    within 6 u sum|c_i x_i| to first order; 7 u allows for the rest. The kernel may also differ from
    the truth by twice what the reference does (the review's form: its error is never asked to be
    smaller than the reference's own). Calibrated on the CPU with a fused-multiply-add emulation at
    these shapes: at most 3.3 u (kernel) and 3.2 u (reference)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    ts = torch.linspace(1.0, 1e-3, 4, device="cuda", dtype=torch.float64)
    head = torch.randn(batch, 6, 256, 256, device="cuda", generator=g)
    z, z_n, acc = (torch.randn(batch, 3, 256, 256, device="cuda", generator=g) for _ in range(3))
    inputs = (z, head[:, :3], head[:, 3:])
    for solver in ("euler", "heun", "rk4", "dpmpp2m"):
        stages, _, coef = kernels.solver_table(solver, ts)
        coef64 = kernels.solver_table(solver, ts, dtype=torch.float64)[2]
        for stage, row, row64 in zip(stages, coef, coef64):
            kw = dict(base=z_n if stage.uses_base else None, acc=acc if stage.uses_acc else None)
            got = kernels._triton()[1].ode_update(*inputs, row.expand(batch, -1), write_acc=stage.writes_acc, **kw)
            expected = reference.ode_update(*inputs, row.expand(batch, -1), write_acc=stage.writes_acc, **kw)
            kw64 = {k: _float64(v) for k, v in kw.items()}
            kw_abs = {k: _float64(v, torch.abs) for k, v in kw.items()}
            exact = reference.ode_update(*map(_float64, inputs), row64.expand(batch, -1), write_acc=stage.writes_acc,
                                         **kw64)
            size = reference.ode_update(*(_float64(x, torch.abs) for x in inputs), row64.abs().expand(batch, -1),
                                        write_acc=stage.writes_acc, **kw_abs)
            for a, b, e, s in zip(got, expected, exact, size):
                if e is None:
                    continue
                bound = 7 * U32 * s
                ref_error = (b.double() - e).abs()
                assert (ref_error <= bound).all(), (solver, (ref_error / (U32 * s)).max().item())
                kernel_error = (a.double() - e).abs()
                assert (kernel_error <= 2 * ref_error.max() + bound).all(), (solver, kernel_error.max().item())


@pytest.fixture(scope="module")
def tiny_cuda():
    torch.manual_seed(0)
    return randomize_zero_convs(nets.build("tiny").eval()).cuda()


@pytest.mark.parametrize("norm_kernel", ["triton", "slab"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("solver,steps", [("euler", 3), ("heun", 2), ("rk4", 1), ("dpmpp2m", 4)])
def test_cuda_graph_replay_of_every_fixed_step_solver(tiny_cuda, solver, steps, precision, norm_kernel):
    """Captured and replayed (channels_last, fused ODE update, a Triton GN) equals the same solve run eagerly."""
    g = torch.Generator().manual_seed(1)
    speed = Speed(precision=precision, encoder_precision=precision, channels_last=True, fold_biases=True,
                  norm_kernel=norm_kernel, fused_ode=True, cuda_graphs=True, cudnn_benchmark=True)
    resolver = SuperResolver(tiny_cuda, ModelConfig(sigma=0.2), SamplerSpec(solver=solver, steps=steps), speed)
    with torch.inference_mode():
        for _ in range(2):
            y = torch.rand(2, 3, 16, 16, generator=g).cuda()
            z1 = torch.randn(2, 3, 64, 64, generator=g).cuda()
            torch.testing.assert_close(resolver.run(y, z1)[0], resolver.run(y, z1, replay=False)[0],
                                       atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4", "dpmpp2m"])
def test_cuda_fused_solve_matches_the_unfused_solve(tiny_cuda, solver, exact_fp32):
    """Fused (coefficients folded in float64) and unfused (ecdp.sampling's fp32 arithmetic) solves
    agree within 2e-4 with exact fp32 convolutions: on the CPU the two differ by at most 4e-5 on this
    network, 5x inside. Each is also compared with the float64 solve (on the CPU): the fused update
    rounds less than the unfused one (no division by sqrt(1 - alpha), no cancellation), so it must be
    no further from float64, up to 1e-5 for the GPU's convolution algorithms' own rounding."""
    g = torch.Generator().manual_seed(2)
    y = torch.rand(2, 3, 16, 16, generator=g).cuda()
    z1 = torch.randn(2, 3, 64, 64, generator=g).cuda()
    config = ModelConfig(sigma=0.2)
    with torch.inference_mode():
        sampler = SamplerSpec(solver=solver, steps=3)
        fast = SuperResolver(tiny_cuda, config, sampler, Speed(fused_ode=True))
        cond = fast.net.encode(y, z1.shape[-2:])
        fused = fused_solve(fast.net.denoiser, z1, cond, fast.table(z1))
        plain = solve(fast.model, z1, cond, sampler)[0]
        reference = SuperResolver(copy.deepcopy(tiny_cuda).cpu().double(), config, sampler)
        truth = solve(reference.model, z1.cpu().double(), reference.net.encode(y.cpu().double(), z1.shape[-2:]),
                      sampler)[0]
    torch.testing.assert_close(fused, plain, atol=2e-4, rtol=2e-4)
    fused_error, plain_error = ((x.cpu().double() - truth).abs().max().item() for x in (fused, plain))
    assert fused_error <= plain_error + 1e-5, (fused_error, plain_error)


def test_cuda_compiled_network_with_the_slab_norm_matches_the_plain_one(tiny_cuda, exact_fp32):
    """torch.compile of the denoiser with the slab operator at every norm site (kept in Inductor's
    graph) gives the plain network's estimates in fp32, to the tolerance of the Triton kernels'
    parity tests (statistics accumulated in another order)."""
    compiled = SuperResolver(tiny_cuda, ModelConfig(sigma=0.2), SamplerSpec(solver="heun", steps=2),
                             Speed(channels_last=True, norm_kernel="slab", compile_mode="default")).net
    g = torch.Generator().manual_seed(3)
    y, z = torch.rand(2, 3, 16, 16, generator=g).cuda(), torch.randn(2, 3, 64, 64, generator=g).cuda()
    t = torch.tensor([0.3, 0.8], device="cuda")
    with torch.inference_mode():
        got = compiled.denoiser(z, t, compiled.encode(y, (64, 64)))
        expected = tiny_cuda.denoiser(z, t, tiny_cuda.encode(y, (64, 64)))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-4 * b.abs().max().item(), rtol=1e-4)
