"""The kernel-count model of one CUDA solve (bench/kernel_count.py), run on the CPU: the fast
engine's Speed on CUDA launches at most half the kernels of 41605cb's at batch 1, the paper preset."""
import pytest

pytest.importorskip("triton")

import torch  # noqa: E402

from bench.kernel_count import before_speed, count_solve  # noqa: E402
from ecdp.nets import ResBlock, build  # noqa: E402
from ecdp.speed import Speed  # noqa: E402


def test_the_cuda_engine_launches_at_most_half_the_kernels_of_before():
    before, now = count_solve(before_speed()), count_solve(Speed.auto("cuda", fixed_step=True))
    print(f"paper preset, batch 1, Heun 3: {before.total} -> {now.total} kernels per solve "
          f"({before.total / now.total:.2f}x fewer)")
    assert before.total >= 2 * now.total
    assert now.kernels["cuDNN NCHW<->NHWC transposes"] == 0 and now.kernels["autocast weight casts"] == 0
    with torch.device("meta"):
        blocks = [m for m in build("paper").denoiser.modules() if isinstance(m, ResBlock)]
    folded = len(blocks) + sum(isinstance(b.skip, torch.nn.Conv2d) for b in blocks)   # conv1, and skip convs
    assert (len(blocks), folded) == (22, 36)
    assert before.kernels["conv bias add"] - now.kernels["conv bias add"] == folded * 6   # at every NFE


def test_the_rules_count_what_they_name():
    """NCHW convolutions cost three transposes each, autocast two casts per layer: the counts differ
    from the channels_last bf16 network by exactly the rules."""
    bf16 = dict(precision="bf16", encoder_precision="bf16", norm_kernel="triton")
    plain = count_solve(Speed(**bf16), preset="tiny", lr=8)
    nhwc = count_solve(Speed(**bf16, channels_last=True), preset="tiny", lr=8)
    convs = plain.kernels["conv2d"]
    assert convs > 0 and plain.kernels["cuDNN NCHW<->NHWC transposes"] == 3 * convs
    assert nhwc.kernels["cuDNN NCHW<->NHWC transposes"] == 0
    cast = count_solve(Speed(**bf16, autocast=True), preset="tiny", lr=8)
    assert cast.kernels["autocast weight casts"] == 2 * (convs + cast.kernels["linear"])
