"""Roofline: the device ceilings measured in this run (a device-to-device copy; a large matrix
product, bf16 on GPU, fp32 on CPU) and one network evaluation of each preset at its benchmark size,
eager with the conditioning recomputed at every evaluation (as a training step does) and with it
computed once per solve ("cached"), timed against them."""
import pytest
import torch

from bench.bench_network import evaluation, work_of
from bench.roofline import work
from bench.harness import CUDA, DEVICE, ENGINE_DTYPE, Case, dtype_name, inputs, measure, shape_text

COPY_ELEMENTS = 2**28 if CUDA else 2**25   # fp32: 1 GiB per buffer on GPU, 128 MiB on CPU
MATMUL_SIZE = 8192 if CUDA else 2048
PRESET_CASES = [Case("tiny", 64 if CUDA else 32, 1), Case("small", 64 if CUDA else 32, 1), Case("paper", 64, 1)]


def test_ceiling_copy(benchmark):
    source = torch.ones(COPY_ELEMENTS, device=DEVICE)
    target = torch.empty_like(source)
    measure(benchmark, lambda: target.copy_(source), rounds=10, ceiling="copy", path="copy",
            dtype=dtype_name(source.dtype), shape=shape_text(source.shape), bytes=2 * source.nbytes)


def test_ceiling_matmul(benchmark):
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=generator).to(DEVICE, ENGINE_DTYPE) for _ in range(2))
    measure(benchmark, lambda: a @ b, rounds=10, ceiling="matmul", path="matmul", dtype=dtype_name(a.dtype),
            shape=shape_text(a.shape, b.shape), flops=2 * MATMUL_SIZE**3)


@pytest.mark.parametrize("path", ["eager", "cached"])
@pytest.mark.parametrize("case", PRESET_CASES, ids=str)
def test_evaluation(benchmark, models, case, path):
    net, config, model = models(case.model)
    y, z = inputs(case, config.scale)
    t = torch.full((case.batch,), 0.5, device=z.device)
    with torch.no_grad():
        call, dtype, _ = evaluation(path, net, config, y, z, t)
        flops, nbytes = work_of(config, case, path)
        measure(benchmark, call, rounds=case.rounds, warmup=case.warmup, batch=case.batch, model=model,
                preset=case.model, path=path, nfe=1, dtype=dtype_name(dtype), shape=shape_text(z.shape),
                flops=flops, bytes=nbytes, encoder_flops=work(config.net, case.lr, config.scale).encoder_flops)
