"""onnxruntime against PyTorch on CPU: the whole fixed-step solve of the default model (the
reference resolver: fp32, the model's solver and steps) as one ONNX graph, against the same module in eager
PyTorch. The graph is exported by the TorchScript exporter (opset 17): ecdp.export's exporter
spends minutes in its graph optimizer on the unrolled solve on a small CPU, and onnxruntime
optimizes the graph itself when it opens the session."""
import time
import warnings

import onnxruntime
import pytest
import torch

from bench.harness import CPU_CASES, THREADS, inputs, measure, shape_text
from bench.roofline import work
from ecdp.pipeline import SuperResolver

CPU = torch.device("cpu")
CASE = CPU_CASES[0]
OPSET = 17


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    """(resolver, session, Work per image, info): the reference resolver at the smallest CPU case and an
    onnxruntime session of its exported graph."""
    net, config, model = models(CASE.model, CPU)
    resolver = SuperResolver(net, config).eval()
    y, z1 = inputs(CASE, config.scale, CPU)
    path = tmp_path_factory.mktemp("onnx") / "solve.onnx"
    start = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(resolver, (y, z1), str(path), input_names=["lr", "noise"], output_names=["sr"],
                          opset_version=OPSET, dynamo=False)
    export_s = time.perf_counter() - start
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    info = dict(model=model, solver=f"{resolver.sampler.solver} {resolver.sampler.steps} steps, {resolver.sampler.grid} grid",
                export_s=export_s, exporter=f"torch.onnx.export, TorchScript, opset {OPSET}")
    return resolver, session, work(config.net, CASE.lr, config.scale), info


@pytest.mark.parametrize("runtime", ["onnxruntime", "pytorch"])
def test_onnx(benchmark, exported, runtime):
    resolver, session, per_image, info = exported
    y, z1 = inputs(CASE, resolver.scale, CPU)
    feed = {"lr": y.numpy(), "noise": z1.numpy()}
    if runtime == "onnxruntime":
        call = lambda: torch.from_numpy(session.run(None, feed)[0])
    else:
        call = lambda: resolver(y, z1)
    with torch.no_grad():
        expected, nfe = resolver.run(y, z1)
        sr = measure(benchmark, call, device=CPU, rounds=CASE.rounds, batch=CASE.batch, path=runtime,
                     flops=per_image.sample_flops(nfe, CASE.batch), nfe=nfe, dtype="fp32",
                     shape=shape_text(y.shape, expected.shape), **info)
    benchmark.extra_info["max_abs_diff"] = (sr - expected).abs().max().item()
