"""ECDP: efficient conditional diffusion with probability-flow sampling for super-resolution.

``ecdp.Upscaler`` is loaded on first use, so that importing the package (and answering
``ecdp --help``) does not load PyTorch.
"""

__all__ = ["Upscaler"]


def __getattr__(name):
    if name == "Upscaler":
        from ecdp.upscaler import Upscaler

        return Upscaler
    raise AttributeError(f"module 'ecdp' has no attribute {name!r}")
