import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def _import_triton_interpretable():
    """Import Triton (when installed) with TRITON_INTERPRET=1, so test_kernels.py can run its kernels on the CPU.

    Triton reads the variable once, at its first import, which torch may trigger from any test
    module; the variable is unset again so that other tests keep the PyTorch references.
    """
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton  # noqa: F401
    except ImportError:
        pass
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved


_import_triton_interpretable()
