"""Fused kernels for ECDP, each with an exact PyTorch reference."""
from ecdp.kernels.reference import group_norm_silu

__all__ = ["group_norm_silu"]
