"""AOTInductor package of the whole fixed-step solve: (lr, noise) -> sr, compiled for one device.

Load it from Python with ``torch._inductor.aoti_load_package(path)`` or from C++ with
``torch::inductor::AOTIModelPackageLoader`` (see cpp/ecdp_run.cpp); the package metadata holds
the ``ecdp.*`` keys of ``graphs.metadata`` and ``ecdp.device``.
"""
import torch

from ecdp import console
from ecdp.errors import UserError
from ecdp.export.graphs import example_inputs, export_program, load_resolver, metadata
from ecdp.fileio import atomic_path


def export_aoti(model: str, path: str, spec, device: str = "cpu") -> list[str]:
    """Compile the full solve of a model folder into the package `path` (atomically); return [path]."""
    if not str(path).endswith(".pt2"):
        raise UserError(f"an AOTInductor package is a .pt2 file; {path} does not end in .pt2.")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda needs a CUDA GPU and a CUDA build of PyTorch, and none was found.")
    resolver = load_resolver(model, spec, device)
    args = example_inputs(resolver, spec, device)
    configs = {"aot_inductor.metadata": {**metadata(resolver, spec), "ecdp.device": device}}
    with console.stage("tracing the solve (torch.export)"):
        program = export_program(resolver, args)
    with console.stage(f"compiling {path} with AOTInductor for {device} (minutes)"), atomic_path(path) as tmp:
        torch._inductor.aoti_compile_and_package(program, package_path=str(tmp), inductor_configs=configs)
    return [path]
