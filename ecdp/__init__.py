"""ECDP: efficient conditional diffusion with probability-flow sampling for super-resolution."""
from ecdp.upscaler import Upscaler

__all__ = ["Upscaler"]
