"""Exporters of the fixed-step ECDP solver (ONNX, TensorRT, AOTInductor); see export/README.md."""
from ecdp.export.aoti import export_aoti
from ecdp.export.graphs import ExportSpec
from ecdp.export.onnx_export import export_onnx, run_step_graphs
from ecdp.export.trt_engine import TensorRTUpscaler, build_engine, export_engine

__all__ = ["ExportSpec", "export_onnx", "run_step_graphs", "export_engine", "build_engine", "export_aoti",
           "TensorRTUpscaler"]
