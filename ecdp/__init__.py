"""ECDP: efficient conditional diffusion with probability-flow sampling for super-resolution.

``ecdp.Upscaler`` is loaded on first use, so that importing the package (and answering
``ecdp --help``) does not load PyTorch.

``ecdp.kernels`` and ``ecdp.export`` live at the top of the repository (``kernels/``, ``export/``).
An install maps them into the package (pyproject.toml); run from a checkout that is not installed
(``PYTHONPATH=.``, or ``python -m ecdp`` from its root), the finder below maps them the same way.
"""
import importlib.abc
import importlib.util
import os
import sys

__all__ = ["Upscaler"]

_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SIBLINGS = ("kernels", "export")


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds ``ecdp.kernels`` and ``ecdp.export`` in the checkout's top-level folders (their modules
    then follow from the package's search path)."""

    def find_spec(self, name, path=None, target=None):
        parent, _, sibling = name.rpartition(".")
        if parent != "ecdp" or sibling not in _SIBLINGS:
            return None
        folder = os.path.join(_CHECKOUT, sibling)
        return importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"),
                                                      submodule_search_locations=[folder])


def _from_checkout() -> bool:
    """Whether this package runs from a checkout: kernels/ and export/ beside it, not inside it."""
    here = os.path.dirname(os.path.abspath(__file__))
    return all(not os.path.isdir(os.path.join(here, name)) and
               os.path.isfile(os.path.join(_CHECKOUT, name, "__init__.py")) for name in _SIBLINGS)


if _from_checkout() and not any(isinstance(f, _CheckoutFinder) for f in sys.meta_path):
    sys.meta_path.append(_CheckoutFinder())


def __getattr__(name):
    if name == "Upscaler":
        from ecdp.upscaler import Upscaler

        return Upscaler
    raise AttributeError(f"module 'ecdp' has no attribute {name!r}")
