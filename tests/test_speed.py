"""Speed: the one value that says how a solve runs, chosen in one place from the device and the options."""
import dataclasses

import pytest
import torch

import ecdp.speed
from ecdp.acceleration import prepare
from ecdp.nets import GroupNormSiLU, ResBlock, build
from ecdp.speed import Speed


def test_the_reference_is_the_plain_method_and_runs_the_network_itself():
    speed = Speed.choose("reference", "cpu")
    assert speed == Speed() and speed.engine == "reference" and speed.describe() == "fp32"
    net = build("tiny")
    assert prepare(net, speed) is net


@pytest.mark.parametrize("fixed_step", [True, False])
def test_cuda_auto_casts_once_in_channels_last_and_captures_fixed_steps(fixed_step):
    speed = Speed.auto("cuda", fixed_step)   # a device name: no GPU needed to choose
    assert (speed.precision, speed.encoder_precision, speed.autocast) == ("bf16", "bf16", False)
    assert speed.channels_last and speed.fold_biases and not speed.onednn_1x1
    assert speed.cuda_graphs is fixed_step and speed.cudnn_benchmark
    assert not speed.fused_ode   # KERNEL_FIGURES: it did not earn its place
    assert speed.engine == "fast"


def test_compile_replaces_the_triton_norm_on_cuda(monkeypatch):
    monkeypatch.setattr(ecdp.speed, "_triton_available", lambda: True)
    assert Speed.auto("cuda", True).norm_kernel == "triton"
    compiled = Speed.auto("cuda", True, compile=True)
    assert compiled.compile_mode == "default" and compiled.norm_kernel is None


@pytest.mark.parametrize("native", [True, False])
def test_cpu_auto_follows_the_hardware(monkeypatch, native):
    monkeypatch.setattr(ecdp.speed, "native_bf16", lambda: native)
    speed = Speed.auto("cpu", True)
    assert speed.precision == ("bf16" if native else "fp32") and speed.encoder_precision == "fp32"
    assert speed.channels_last and not (speed.cuda_graphs or speed.norm_kernel or speed.fused_ode)
    assert Speed.auto("cpu", fixed_step=False).precision == "fp32"   # dopri5's error control


@pytest.mark.parametrize("options, sentence", [
    (dict(engine="turbo"), "unknown engine 'turbo'"),
    (dict(precision="fp8"), "unknown precision 'fp8'"),
    (dict(engine="reference", precision="fp8"), "unknown precision 'fp8'"),
    (dict(engine="reference", precision="bf16"), "precision bf16 needs the fast engine"),
    (dict(engine="reference", compile=True), "compile needs the fast engine"),
])
def test_bad_options_are_one_sentence(options, sentence):
    with pytest.raises(ValueError, match=sentence):
        Speed.choose(**options)


@pytest.mark.parametrize("field, value", [("precision", "int8"), ("encoder_precision", "fp64"), ("compile_mode", "fast"),
                                          ("norm_kernel", "cudnn")])
def test_a_speed_is_checked_when_made(field, value):
    with pytest.raises(ValueError, match="unknown"):
        Speed(**{field: value})


def test_describe_names_every_option_that_is_on():
    speed = Speed(precision="bf16", channels_last=True, cuda_graphs=True, compile_mode="max-autotune")
    assert speed.describe() == "bf16, encoder fp32, channels last, cuda graphs, compile max-autotune"


def test_export_runs_autocast_at_the_exported_precision():
    assert Speed.export("fp32") == Speed.reference()
    assert Speed.export("fp16") == Speed(precision="fp16", encoder_precision="fp16", autocast=True)


def test_folded_biases_give_the_same_network():
    """conv1's bias moved into the time projection's, the skip convolution's into conv2's: the same
    function in real arithmetic (fp32 here: equal to rounding)."""
    torch.manual_seed(0)
    net = build("tiny").eval()
    for block in net.modules():
        if isinstance(block, ResBlock):
            torch.nn.init.normal_(block.conv1.bias, std=0.5)
            torch.nn.init.normal_(block.conv2.weight, std=0.05)
            if isinstance(block.skip, torch.nn.Conv2d):
                torch.nn.init.normal_(block.skip.bias, std=0.5)
    folded = prepare(net, Speed(fold_biases=True))
    blocks = [b for b in folded.modules() if isinstance(b, ResBlock)]
    assert all(b.conv1.bias is None for b in blocks)
    assert sum(b.skip.bias is None for b in blocks if isinstance(b.skip, torch.nn.Conv2d)) >= 2
    y, z = torch.rand(2, 3, 8, 8), torch.randn(2, 3, 32, 32)
    t = torch.tensor([0.3, 0.7])
    with torch.no_grad():
        for a, b in zip(folded.denoiser(z, t, folded.encode(y, (32, 32))), net.denoiser(z, t, net.encode(y, (32, 32)))):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_a_prepared_network_keeps_the_callers_dtypes_and_is_a_copy():
    """bf16 weights inside; fp32 in and out, as the denoiser contract gives them; the conditioning in
    the denoiser's dtype; the Triton norm put in place only where asked."""
    net = build("tiny").eval()
    fast = prepare(net, Speed(precision="bf16", channels_last=True, norm_kernel="triton"))
    assert next(fast.denoiser.parameters()).dtype == torch.bfloat16 and next(net.parameters()).dtype == torch.float32
    assert next(fast.encoder.parameters()).dtype == torch.float32
    import ecdp.kernels as kernels
    norms = [m for m in fast.modules() if isinstance(m, GroupNormSiLU)]
    assert norms and all(m.impl is kernels.group_norm_silu for m in norms)
    assert all(m.impl is GroupNormSiLU.impl for m in net.modules() if isinstance(m, GroupNormSiLU))
    with torch.no_grad():
        cond = fast.encode(torch.rand(1, 3, 8, 8), (32, 32))
        eps_hat, z0_hat = fast.denoiser(torch.randn(1, 3, 32, 32), torch.tensor([0.5]), cond)
    assert {c.dtype for c in cond} == {torch.bfloat16}
    assert eps_hat.dtype == z0_hat.dtype == torch.float32


def test_every_option_has_a_field_and_one_definition():
    """The speed options are Speed's fields and nothing else carries one: no global switch left."""
    import ecdp.kernels as kernels
    assert not hasattr(kernels, "set_enabled") and not hasattr(kernels, "enabled")
    assert {f.name for f in dataclasses.fields(Speed)} == {
        "precision", "encoder_precision", "autocast", "channels_last", "onednn_1x1", "fold_biases", "norm_kernel",
        "fused_ode", "cuda_graphs", "cudnn_benchmark", "compile_mode"}
