"""One network evaluation: eager fp32 with the conditioning recomputed at every evaluation (as a
training step computes it), with the conditioning computed once (the engine's precision),
torch.compile of that network, and (GPU) its replay from a CUDA graph."""
import time

import pytest
import torch

from bench.harness import CASES, CUDA, ENGINE_DTYPE, GPU_CASES, MAIN_CASE, dtype_name, inputs, measure, shape_text
from bench.roofline import work
from ecdp.acceleration import prepare
from ecdp.speed import Speed

PATHS = ["eager", "cached", "compiled"] + (["graphed"] if CUDA else [])
COMPILED = GPU_CASES[:2] if CUDA else [MAIN_CASE]   # compiling takes minutes on CPU: the cases worth it
RUNS = [(case, path) for case in CASES for path in PATHS if path != "compiled" or case in COMPILED]


@pytest.mark.parametrize("case,path", RUNS, ids=[f"{case}-{path}" for case, path in RUNS])
def test_network(benchmark, models, case, path):
    net, config, model = models(case.model)
    y, z = inputs(case, config.scale)
    t = torch.full((case.batch,), 0.5, device=z.device)
    with torch.no_grad():
        call, dtype, info = evaluation(path, net, config, y, z, t)
        flops, nbytes = work_of(config, case, path)
        measure(benchmark, call, rounds=3 * case.rounds, warmup=case.warmup, batch=case.batch, model=model,
                path=path, nfe=1, dtype=dtype_name(dtype), shape=shape_text(z.shape), flops=flops, bytes=nbytes,
                **info)


def evaluation(path, net, config, y, z, t):
    """(call, dtype, info): one evaluation on `path`, ready to time."""
    if path == "eager":   # the conditioning computed again at every evaluation, as without a cache
        return (lambda: net(z, t, net.encode(y, z.shape[-2:]))), torch.float32, {}
    fast = prepare(net, Speed.auto(z.device, True, precision="bf16" if CUDA else "fp32", compile=path == "compiled"))
    cond = fast.encode(y, z.shape[-2:])
    call = lambda: fast.denoiser(z, t, cond)
    if path == "compiled":
        return call, ENGINE_DTYPE, dict(compile_s=compile_seconds(call))
    if path == "graphed":
        return cuda_graph(call), ENGINE_DTYPE, {}
    return call, ENGINE_DTYPE, {}


def work_of(config, case, path):
    """(FLOPs, bytes) per call: the eager path recomputes the conditioning in fp32, the others use
    the cache in the engine's precision."""
    if path == "eager":
        per_image = work(config.net, case.lr, config.scale)
        return case.batch * per_image.nfe_flops, case.batch * per_image.nfe_bytes
    per_image = work(config.net, case.lr, config.scale, ENGINE_DTYPE)
    return case.batch * per_image.cached_nfe_flops, case.batch * per_image.cached_nfe_bytes


def compile_seconds(call):
    """Seconds of the first call (the compilation); skip the benchmark when compiling fails."""
    start = time.perf_counter()
    try:
        call()
    except Exception as error:  # any failure of the compiler stack means: not available here
        pytest.skip(f"torch.compile failed on this machine: {type(error).__name__}: {error}")
    return time.perf_counter() - start


def cuda_graph(call):
    """Replay of `call` captured in a CUDA graph (after warm-up on a side stream)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    return graph.replay
