"""ONNX export: the whole solve as one graph, or an encoder graph plus a one-step graph.

Opset and GroupNorm. The graphs use opset 18 and the torch.export-based exporter, which writes
``F.group_norm`` as InstanceNormalization over the input reshaped to (B, groups, -1), followed by
the per-channel Mul and Add of GroupNorm's affine. That form runs on every onnxruntime execution
provider and on TensorRT (a native normalization layer; the statistics stay fp32 because the
model casts to fp32 around GroupNorm). The GroupNormalization operator is avoided: in opset 18
its scale and bias are per group, not per channel as in PyTorch (deprecated for that reason), and
the per-channel opset-21 version is beyond the opsets TensorRT 10.0's parser reads (9 to 20).
Opset 18 itself is the lowest the exporter writes natively; it needs onnxruntime >= 1.14 and
TensorRT >= 10.0. bf16 graphs use opset 22, the first whose Conv accepts bfloat16 (recent TensorRT
10 releases read it; onnxruntime's CPU provider has no bf16 kernels).

Host loop over the step graph (t_i from the metadata key ``ecdp.time_grid``)::

    mu, *cond = encoder(lr)
    z = noise
    for t, t_next in zip(times, times[1:]):
        z = step(z, t, t_next, *cond)
    sr = clip(mu + sigma * z, 0, 1)
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import torch

from ecdp import console
from ecdp.export.graphs import (EncoderGraph, ExportSpec, StepGraph, example_inputs, export_program, load_resolver,
                                metadata, step_times)
from ecdp.fileio import atomic_paths
from ecdp.pipeline import to_image

OPSET = 18
BF16_OPSET = 22


def export_onnx(model: str, path: str | Path, spec: ExportSpec, graph: str = "full") -> list[Path]:
    """Write the ONNX graph(s) of a model folder; return the paths written.

    graph "full": inputs (lr, noise), output sr. graph "step": ``path`` holds the step graph
    (z, t, t_next, cond_0.. -> z_next) and ``encoder_path(path)`` the encoder (lr -> mu, cond_0..).
    The two go together: both are traced before either is written, they are renamed into place
    together (``ecdp.fileio.atomic_paths``), and both carry the metadata key PAIR, a digest of the
    two graphs, which ``run_step_graphs`` checks.
    """
    path = Path(path)
    resolver = load_resolver(model, spec)
    lr, noise = example_inputs(resolver, spec)
    opset = BF16_OPSET if spec.precision == "bf16" else OPSET

    def meta(kind, **extra):
        return {**metadata(resolver, spec), "ecdp.graph": kind, **extra}

    if graph == "full":
        graphs = {path: onnx_model(resolver, (lr, noise), ["lr", "noise"], ["sr"], path, meta("full"), opset)}
    else:
        step, encoder = StepGraph(resolver), EncoderGraph(resolver)
        with torch.no_grad():
            _, *cond = encoder(lr)
        names = [f"cond_{i}" for i in range(len(cond))]
        t, t_next = torch.ones(spec.batch), torch.zeros(spec.batch)  # two tensors: one passed twice would alias
        graphs = {encoder_path(path): onnx_model(encoder, (lr,), ["lr"], ["mu", *names], encoder_path(path),
                                                 meta("encoder"), opset),
                  path: onnx_model(step, (noise, t, t_next, *cond), ["z", "t", "t_next", *names], ["z_next"], path,
                                   meta("step", **{"ecdp.time_grid": json.dumps(step_times(resolver))}), opset)}
        pair = hashlib.sha256(b"".join(proto.SerializeToString() for proto in graphs.values())).hexdigest()[:16]
        for proto in graphs.values():
            onnx.helper.set_model_props(proto, {**_props(proto), PAIR: pair})
    with atomic_paths(*graphs) as temporaries:
        for tmp, proto in zip(temporaries, graphs.values()):
            onnx.save(proto, str(tmp))
    return list(graphs)


PAIR = "ecdp.pair"
"""Metadata key of an encoder graph and its step graph: the same value in both files of one export."""


def encoder_path(path: str | Path) -> Path:
    """Where the encoder graph of a step-graph export goes: out.onnx -> out.encoder.onnx."""
    path = Path(path)
    return path.with_name(f"{path.stem}.encoder{path.suffix}")


def onnx_model(module: torch.nn.Module, args: tuple, input_names: list[str], output_names: list[str], path: Path,
               props: dict[str, str], opset: int = OPSET) -> onnx.ModelProto:
    """The ONNX model of `module` on `args`, with metadata `props`; `path` (where it will go) names it
    in the progress lines."""
    with console.stage(f"tracing {path.name} (torch.export)"):
        program = export_program(module, args)
    with console.stage(f"converting {path.name} to ONNX"):
        onnx_program = torch.onnx.export(program, args, input_names=input_names, output_names=output_names,
                                         opset_version=opset, dynamo=True, external_data=False, optimize=True,
                                         verbose=False)
    proto = onnx_program.model_proto
    onnx.helper.set_model_props(proto, props)
    return proto


def _props(proto):
    return {p.key: p.value for p in proto.metadata_props}


def run_step_graphs(encoder, step, lr: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """sr for numpy (lr, noise): the host loop over onnxruntime sessions of an encoder and a step graph.
    Raises ValueError when the two are not from one export (their PAIR metadata differ)."""
    meta = step.get_modelmeta().custom_metadata_map
    if encoder.get_modelmeta().custom_metadata_map.get(PAIR) != meta.get(PAIR):
        raise ValueError("the encoder graph and the step graph come from different exports; export them again "
                         "together (ecdp-export --graph step)")
    times, sigma = json.loads(meta["ecdp.time_grid"]), np.float32(meta["ecdp.sigma"])
    mu, *cond = encoder.run(None, {"lr": lr})
    cond = {out.name: value for out, value in zip(encoder.get_outputs()[1:], cond)}
    z, batch = noise, lr.shape[0]
    for t, t_next in zip(times, times[1:]):
        times_in = {"t": np.full(batch, t, np.float32), "t_next": np.full(batch, t_next, np.float32)}
        (z,) = step.run(None, {"z": z, **times_in, **cond})
    return to_image(torch.from_numpy(mu), float(sigma), torch.from_numpy(z)).numpy()
