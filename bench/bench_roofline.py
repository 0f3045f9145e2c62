"""Roofline: the device ceilings measured in this run (a device-to-device copy; per precision, the
faster of a large matrix product and a large 3x3 convolution in channels_last, each path measured
against the ceiling of its own precision) and one network evaluation of each preset at its
benchmark size, eager with the conditioning recomputed at every evaluation (as a training step
does) and with it computed once per solve ("cached"), timed against them."""
import pytest
import torch

from bench.bench_network import evaluation, work_of
from bench.roofline import work
from bench.harness import CUDA, DEVICE, Case, dtype_name, inputs, measure, shape_text
from ecdp.speed import bf16_supported

COPY_ELEMENTS = 2**28 if CUDA else 2**25   # fp32: 1 GiB per buffer on GPU, 128 MiB on CPU
MATMUL_SIZE = 8192 if CUDA else 2048
CONV_SHAPE = (8, 256, 128, 128) if CUDA else (1, 256, 64, 64)   # (batch, channels, height, width), 3x3, same channels
PRECISIONS = [torch.float32] + ([torch.bfloat16] if CUDA or bf16_supported() else [])
PRESET_CASES = [Case("tiny", 64 if CUDA else 32, 1), Case("small", 64 if CUDA else 32, 1), Case("paper", 64, 1)]


def test_ceiling_copy(benchmark):
    source = torch.ones(COPY_ELEMENTS, device=DEVICE)
    target = torch.empty_like(source)
    measure(benchmark, lambda: target.copy_(source), rounds=10, ceiling="copy", path="copy",
            dtype=dtype_name(source.dtype), shape=shape_text(source.shape), bytes=2 * source.nbytes)


@pytest.mark.parametrize("dtype", PRECISIONS, ids=dtype_name)
def test_ceiling_matmul(benchmark, dtype):
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=generator).to(DEVICE, dtype) for _ in range(2))
    measure(benchmark, lambda: a @ b, rounds=10, ceiling=f"compute {dtype_name(dtype)}", path="matmul",
            dtype=dtype_name(dtype), shape=shape_text(a.shape, b.shape), flops=2 * MATMUL_SIZE**3)


@pytest.mark.parametrize("dtype", PRECISIONS, ids=dtype_name)
def test_ceiling_convolution(benchmark, dtype):
    batch, channels, height, width = CONV_SHAPE
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(DEVICE, dtype, memory_format=torch.channels_last)
    x = torch.randn(CONV_SHAPE, generator=torch.Generator().manual_seed(0)).to(DEVICE, dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        measure(benchmark, lambda: conv(x), rounds=10, ceiling=f"compute {dtype_name(dtype)}", path="conv3x3",
                dtype=dtype_name(dtype), shape=shape_text(x.shape),
                flops=2 * 9 * channels * channels * batch * height * width)


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
