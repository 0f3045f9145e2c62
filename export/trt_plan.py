"""TensorRT plans (serialized engines) of the full ONNX graph: the builder, and TensorRTResolver to run
one behind an Upscaler. A plan is what TensorRT builds; "engine" in ecdp means how a solve runs.

Networks are built strongly typed: every tensor keeps the precision of the ONNX graph (``--fp16``
/ ``--bf16`` export fp16 / bf16 convolutions with fp32 GroupNorm statistics and an fp32 ODE
state), so TensorRT never lowers precision on its own. TensorRT 11 builds nothing else; its
precision builder flags are gone. Shapes are static; the optimization profile pins them.
"""
import tempfile
import threading
from pathlib import Path

import torch

from ecdp import console
from ecdp.errors import UserError
from ecdp.export.onnx_export import export_onnx
from ecdp.fileio import atomic_path
from ecdp.upscaler import Upscaler

INSTALL = "TensorRT is not installed: pip install tensorrt (needs an NVIDIA GPU with CUDA)."
NO_GPU = ("TensorRT needs an NVIDIA GPU, and PyTorch sees none: run on a machine with an NVIDIA GPU "
          "and a CUDA build of PyTorch.")


def import_tensorrt():
    """The tensorrt module, or a UserError saying what is missing."""
    try:
        import tensorrt
    except (ImportError, OSError):
        raise UserError(INSTALL) from None
    if not torch.cuda.is_available():
        raise UserError(NO_GPU)
    return tensorrt


def export_plan(model: str, path: str | Path, spec, *, workspace_gib: float = 4.0,
                timing_cache: str | Path | None = None) -> list[Path]:
    """Build the TensorRT plan of a model folder's full graph, or of an .onnx file; return [path]."""
    import_tensorrt()
    if Path(model).suffix == ".onnx":
        if not Path(model).is_file():
            raise UserError(f"{model} does not exist.")
        return build_plan(model, path, workspace_gib=workspace_gib, timing_cache=timing_cache)
    with tempfile.TemporaryDirectory() as folder:
        (onnx_path,) = export_onnx(model, Path(folder) / "full.onnx", spec)
        return build_plan(onnx_path, path, workspace_gib=workspace_gib, timing_cache=timing_cache)


def build_plan(onnx_path: str | Path, path: str | Path, *, workspace_gib: float = 4.0,
               timing_cache: str | Path | None = None) -> list[Path]:
    """Write the TensorRT plan of an ONNX file to `path`; read and update a timing cache file."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {onnx_path}: {errors}.")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    config.add_optimization_profile(_static_profile(builder, network))
    cache = Path(timing_cache) if timing_cache else None
    known = cache.read_bytes() if cache and cache.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(known), False)
    with console.stage(f"building the TensorRT plan {path}"):
        plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UserError(f"TensorRT could not build a plan from {onnx_path} (its log above says why).")
    with atomic_path(path) as tmp:
        tmp.write_bytes(plan)
    if cache:
        with atomic_path(cache) as tmp:
            tmp.write_bytes(config.get_timing_cache().serialize())
    return [Path(path)]


def _static_profile(builder, network):
    """An optimization profile with min = opt = max = each input's exported shape."""
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        profile.set_shape(tensor.name, shape, shape, shape)
    return profile


class TensorRTResolver:
    """A TensorRT plan of the full graph as the resolver of an ``Upscaler``: ``run(y, z1) -> (x, None)``
    on the current CUDA device (the network evaluations are not counted).

    The plan computes mu and the output map itself, for its one LR shape: y must have it (the
    Upscaler around it then neither pads nor tiles). Its sampler is not recorded (``sampler``
    None) and its precision is the one it was exported in. Raises UserError for a file this
    TensorRT cannot run.
    """

    engine, lr_multiple, precision, tiles = "tensorrt", 1, "as exported", False

    def __init__(self, plan_path: str | Path):
        trt = import_tensorrt()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.cuda_engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.cuda_engine is None:
            raise UserError(f"{plan_path} is not a plan that this TensorRT can run (its log above says why).")
        self.context = self.cuda_engine.create_execution_context()
        self.shapes = {name: tuple(self.cuda_engine.get_tensor_shape(name)) for name in ("lr", "noise", "sr")}
        self.scale = self.shapes["sr"][-1] // self.shapes["lr"][-1]
        self.sampler, self.lock = None, threading.Lock()   # one execution context: one run at a time

    def run(self, y: torch.Tensor, z1: torch.Tensor, mu: torch.Tensor | None = None, callback=None
            ) -> tuple[torch.Tensor, None]:
        """(x, None) for y of the plan's LR shape and its prior noise z1; mu must be None."""
        if tuple(y.shape) != self.shapes["lr"]:
            raise UserError(f"this plan takes LR batches of shape {self.shapes['lr']}, got {tuple(y.shape)}.")
        if mu is not None:
            raise ValueError("a TensorRT plan computes mu(y) itself")
        tensors = {"lr": y.contiguous(), "noise": z1.contiguous(), "sr": torch.empty(self.shapes["sr"], device=y.device)}
        with self.lock:
            for name, tensor in tensors.items():
                self.context.set_tensor_address(name, tensor.data_ptr())
            if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
                raise RuntimeError("TensorRT failed to run the plan.")
        return tensors["sr"], None


def tensorrt_upscaler(plan_path: str | Path, *, seed: int = 0) -> Upscaler:
    """An ``Upscaler`` around a TensorRT plan of the full graph (``TensorRTResolver``), on CUDA.

    Images must have the plan's LR size and batch. The prior noise is drawn as for any Upscaler,
    so the same seed gives the same noise as the PyTorch path.
    """
    return Upscaler(TensorRTResolver(plan_path), device="cuda", seed=seed)
