"""Exporters of the fixed-step ECDP solver (ONNX, TensorRT, AOTInductor)."""
