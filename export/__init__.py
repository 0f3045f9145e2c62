"""Exporters of the fixed-step ECDP solve (ONNX, TensorRT, AOTInductor); see the README's "Deploy" section.

The names below are loaded on first use: the ONNX and TensorRT ones need the ``export`` extra
(``pip install "ecdp[export]"``) and TensorRT, which the ``ecdp-export`` command checks for itself.
"""
import importlib

_HOMES = {"export_aoti": "aoti", "ExportSpec": "graphs", "export_onnx": "onnx_export",
          "run_step_graphs": "onnx_export", "export_plan": "trt_plan", "build_plan": "trt_plan",
          "TensorRTResolver": "trt_plan", "tensorrt_upscaler": "trt_plan"}

__all__ = list(_HOMES)


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f"module 'ecdp.export' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ecdp.export.{_HOMES[name]}"), name)
