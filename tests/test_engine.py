"""The fast engine (SuperResolver at a Speed other than the reference) against the reference: the
same images from the same noise."""
import copy
import threading

import pytest
import torch

from ecdp.acceleration import fused_solve, prepare
from ecdp.modelfile import ModelConfig
from ecdp.nets import ResBlock, build
from ecdp.pipeline import SuperResolver
from ecdp.sampling import SamplerSpec, solve
from ecdp.speed import Speed
from helpers import randomize_zero_convs

FAST_FP32 = Speed.auto("cpu", True, precision="fp32")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return randomize_zero_convs(build("tiny").eval())


def _inputs(batch=1, size=12, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(batch, 3, size, size, generator=g)
    z1 = torch.randn(batch, 3, 4 * size, 4 * size, generator=g)
    return y.to(device), z1.to(device)


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4", "dpmpp2m"])
def test_fast_matches_reference_in_fp32(tiny, solver):
    config = ModelConfig(sigma=0.2)
    y, z1 = _inputs(batch=2)
    with torch.inference_mode():
        reference = SuperResolver(tiny, config, SamplerSpec(solver=solver, steps=3))(y, z1)
        fast = SuperResolver(tiny, config, SamplerSpec(solver=solver, steps=3), FAST_FP32)(y, z1)
    assert (fast - reference).abs().max().item() <= 1e-4


def test_cache_holds_one_tensor_per_block(tiny):
    y, _ = _inputs()
    cache = prepare(tiny, FAST_FP32).encode(y, (4 * y.shape[-2], 4 * y.shape[-1]))
    blocks = [m for m in tiny.denoiser.modules() if isinstance(m, ResBlock)]
    assert len(cache) == len(blocks)
    assert cache[0].shape[-2:] == (48, 48) and cache[-1].shape[-2:] == (48, 48)


def _graphed_resolver(tiny, device):
    speed = Speed.auto(device, True, precision="fp32")
    return SuperResolver(copy.deepcopy(tiny).to(device), ModelConfig(sigma=0.2), SamplerSpec(solver="heun", steps=2),
                         speed if device == "cuda" else Speed(cuda_graphs=True))


def test_static_buffer_solve_on_cpu(tiny):
    """The loop a CUDA graph replays (the resolver's GraphedSolve, called here on the CPU): buffers
    per shape, refilled per call, LRU of two."""
    resolver = _graphed_resolver(tiny, "cpu")
    graphed = resolver.graphs
    graphed.max_graphs = 2
    with torch.inference_mode():
        for seed, size in [(0, 8), (1, 8), (2, 12), (3, 16), (4, 8)]:
            y, z1 = _inputs(size=size, seed=seed)
            mu = resolver.upscale(y)
            assert torch.allclose(graphed(y, z1, mu), resolver.run(y, z1)[0], atol=1e-5)
    assert len(graphed.graphs) == 2
    assert [k[0][0][-1] for k in graphed.graphs] == [16, 8]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_capture_and_replay(tiny, exact_fp32):
    """The resolver as the fast engine builds it on CUDA (CUDA graphs on) against its own eager solve;
    TF32 off so that both sides compute the same fp32 convolutions."""
    resolver = _graphed_resolver(tiny, "cuda")
    with torch.inference_mode():
        for seed, size in [(0, 8), (1, 8), (2, 12), (3, 16), (4, 8)]:
            y, z1 = _inputs(size=size, seed=seed, device="cuda")
            torch.testing.assert_close(resolver.run(y, z1)[0], resolver.run(y, z1, replay=False)[0],
                                       atol=1e-5, rtol=0)
    assert len(resolver.graphs.graphs) == 3


def test_dopri5_cannot_be_captured(tiny):
    with pytest.raises(ValueError, match="fixed-step"):
        SuperResolver(tiny, ModelConfig(), SamplerSpec(solver="dopri5"), Speed(cuda_graphs=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fast_bf16_on_cuda_is_within_45_db_of_the_reference():
    """The built-in model, the same seed: engine "fast" (bf16, CUDA graph) against "reference" (fp32)."""
    from skimage import data

    from ecdp.metrics import psnr
    from ecdp.upscaler import Upscaler

    lr = torch.from_numpy(data.astronaut()[::8, ::8].copy()).permute(2, 0, 1)[None].float() / 255
    outputs = [Upscaler.from_pretrained("default", device="cuda", engine=engine).sample(lr).cpu()
               for engine in ("reference", "fast")]
    assert psnr(*outputs).item() >= 45


@pytest.fixture
def one_intra_op_thread():
    """8 threads each running 2 OpenMP threads on 2 cores thrash; serial and threaded calls both
    run with one intra-op thread, so that they reduce in the same order."""
    intra_op = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(intra_op)


def _threaded(calls, threads=8):
    """Run the zero-argument calls from `threads` threads at once; results in call order."""
    from concurrent.futures import ThreadPoolExecutor
    barrier = threading.Barrier(threads)

    def run(call):
        barrier.wait(timeout=60)
        return call()

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(run, calls))


def test_two_upscalers_from_eight_threads_match_serial_calls(tiny, one_intra_op_thread):
    from ecdp.upscaler import Upscaler

    config = ModelConfig(sigma=0.2, solver="heun", steps=2)
    upscalers = [Upscaler.from_model(tiny, config, engine="fast", seed=seed) for seed in (0, 1)]
    images = [_inputs(size=8, seed=seed)[0] for seed in range(4)]
    jobs = [(upscalers[i % 2], images[i % 4]) for i in range(8)]
    threaded = _threaded([lambda up=up, y=y: up.sample(y) for up, y in jobs])
    serial = [up.sample(y) for up, y in jobs]
    for a, b in zip(threaded, serial):
        assert torch.equal(a, b)
    assert not torch.equal(serial[0], serial[1])   # the two seeds differ, so a mix-up would show


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_graphed_solves_from_eight_threads_match_serial_calls(tiny, one_intra_op_thread, device):
    """Two GraphedSolves (the static-buffer loop on the CPU, CUDA graphs on a GPU: two captures
    under one process-wide lock, replays on private streams) shared by 8 threads."""
    config = ModelConfig(sigma=0.2)
    net = copy.deepcopy(tiny).to(device)
    graphs = [SuperResolver(net, config, SamplerSpec(solver=solver, steps=2), Speed(cuda_graphs=True)).graphs
              for solver in ("heun", "dpmpp2m")]
    for graphed in graphs:
        graphed.max_graphs = 2
    jobs = [(graphs[i % 2], _with_mu(*_inputs(size=(8, 12)[i // 4], seed=i, device=device))) for i in range(8)]

    def call(graphed, inputs):
        with torch.inference_mode():   # per thread: threads do not inherit it
            return graphed(*inputs)

    threaded = _threaded([lambda job=job: call(*job) for job in jobs])   # the captures race here
    serial = [call(*job) for job in jobs]
    for a, b in zip(threaded, serial):
        assert torch.equal(a, b)


def _with_mu(y, z1):
    """(y, z1, mu): mu a fixed image, as the resolver's run hands it to its GraphedSolve."""
    return y, z1, torch.full_like(z1, 0.5)


@pytest.fixture
def compile_calls(monkeypatch):
    """torch.compile replaced by a spy that records what it is given and returns it uncompiled."""
    calls = []

    def spy(fn, **options):
        calls.append((fn, options))
        return fn

    monkeypatch.setattr(torch, "compile", spy)
    return calls


def test_upscaler_compile_reaches_torch_compile_of_the_prepared_denoiser(tiny, compile_calls):
    from ecdp.upscaler import Upscaler
    upscaler = Upscaler.from_model(tiny, ModelConfig(sigma=0.2, steps=1), engine="fast", precision="fp32", compile=True)
    (compiled, _), = compile_calls   # the call of the denoiser of the engine's copy (nn.Module.compile)
    denoiser = compiled.__self__
    assert type(denoiser) is type(tiny.denoiser) and denoiser is not tiny.denoiser
    expected = tiny.denoiser.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in denoiser.state_dict().items())
    assert compile_calls[0][1]["dynamic"] is False
    assert upscaler.sample(_inputs(size=8)[0]).shape == (1, 3, 32, 32)


def test_upscaler_compile_needs_the_fast_engine(tiny):
    from ecdp.errors import UserError
    from ecdp.upscaler import Upscaler
    with pytest.raises(UserError, match="compile needs the fast engine"):
        Upscaler.from_model(tiny, ModelConfig(), engine="reference", compile=True)


def test_cli_compile_flag_reaches_torch_compile(tmp_path, compile_calls):
    import numpy as np
    from PIL import Image

    from ecdp.cli import main
    from helpers import save_tiny_model
    model = save_tiny_model(tmp_path / "model", steps=1)
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(tmp_path / "in.png")
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--checkpoint", str(model),
                 "--device", "cpu", "--compile"]) == 0
    assert len(compile_calls) == 1 and (tmp_path / "out.png").exists()


@pytest.mark.parametrize("grid", ["uniform", "logsnr"])
@pytest.mark.parametrize("solver", ["euler", "heun", "rk4", "dpmpp2m"])
def test_fused_ode_solve_matches_the_reference_in_float64(tiny, solver, grid):
    """The fused solve (coefficient table folded in float64, ode_update per NFE) against
    ecdp.sampling.solve of the same network in float64. Both fp32 solves carry the network's fp32
    rounding; the fused update adds at most 7 ulp of its terms per NFE (tests/test_kernels.py),
    where the unfused one divides by sqrt(1 - alpha) and cancels terms of size beta / 2 |z|: the
    fused solve comes within 1e-5 (|z| <= 5 here: about 20 fp32 ulp of z) and no further than the
    unfused one, up to 1e-6 of rounding noise."""
    config = ModelConfig(sigma=0.2)
    spec = SamplerSpec(solver=solver, steps=4, grid=grid)
    y, z1 = _inputs(batch=2, size=8)
    with torch.inference_mode():
        reference = SuperResolver(copy.deepcopy(tiny).double(), config, spec)
        hr = z1.shape[-2:]
        truth, nfe = solve(reference.model, z1.double(), reference.net.encode(y.double(), hr), spec)
        fast = SuperResolver(tiny, config, spec, Speed(fused_ode=True))
        cond = fast.net.encode(y, hr)
        fused = fused_solve(fast.net.denoiser, z1, cond, fast.table(z1))
        unfused = solve(fast.model, z1, cond, spec)[0]
        assert fast.run(y, z1)[1] == nfe
    fused_error = (fused.double() - truth).abs().max().item()
    assert fused_error <= 1e-5
    assert fused_error <= (unfused.double() - truth).abs().max().item() + 1e-6


def test_cudnn_autotuning_is_on_while_a_solve_runs_and_restored_after(tiny):
    """Speed.cudnn_benchmark reaches every network call of the solve, and the process-wide setting
    comes back as it was, after a solve and after a failing one."""
    resolver = SuperResolver(tiny, ModelConfig(sigma=0.2), SamplerSpec(solver="heun", steps=2),
                             Speed(cudnn_benchmark=True))
    seen = []
    hook = resolver.net.denoiser.register_forward_pre_hook(lambda module, args: seen.append(torch.backends.cudnn.benchmark))
    y, z1 = _inputs()
    assert torch.backends.cudnn.benchmark is False
    with torch.inference_mode():
        resolver.run(y, z1)
    assert seen == [True] * 4 and torch.backends.cudnn.benchmark is False
    hook.remove()
    resolver.net.denoiser.register_forward_pre_hook(lambda module, args: 1 / 0)
    with pytest.raises(ZeroDivisionError), torch.inference_mode():
        resolver.run(y, z1)
    assert torch.backends.cudnn.benchmark is False
