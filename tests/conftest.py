"""Test configuration: the helpers' folder on sys.path, the shared fixtures, and the interpreted test modules run apart.

Triton picks interpreter or compiled mode for every kernel when it is defined, its own library
(``tl.sum``, ...) included, at ``import triton``. A process that imported Triton under
``TRITON_INTERPRET=1`` can compile no kernel for a GPU; one that imported it without can
interpret none. So the modules in ``INTERPRETED`` run in a pytest subprocess of their own with
``TRITON_INTERPRET=1`` (one item here, failing with the subprocess's report), and this process
keeps Triton compiled: ``test_triton_compile.py`` compiles the kernels for sm_90 in it.
Run such a module directly with ``TRITON_INTERPRET=1 python -m pytest tests/test_kernels.py``.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

INTERPRETED = ("test_kernels.py",)


def interpreting():
    """Whether this process runs Triton kernels on Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def pytest_pycollect_makemodule(module_path, parent):
    if module_path.name in INTERPRETED and not interpreting():
        return InterpretedModule.from_parent(parent, path=module_path)
    return None


class InterpretedModule(pytest.File):
    """A test module that runs in a subprocess with TRITON_INTERPRET=1, as one item."""

    def collect(self):
        yield InterpretedRun.from_parent(self, name="interpreted")


class InterpretedRun(pytest.Item):
    def runtest(self):
        config = self.config
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(self.path)]
        if config.option.markexpr:
            command += ["-m", config.option.markexpr]
        env = dict(os.environ, TRITON_INTERPRET="1")
        result = subprocess.run(command, cwd=config.rootpath, env=env, capture_output=True, text=True)
        self.summary = (result.stdout + result.stderr).strip()
        if result.returncode not in (0, 5):   # 5: nothing collected (e.g. -m slow)
            raise InterpretedFailure(self.summary)
        print(self.summary.splitlines()[-1] if self.summary else "")

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, InterpretedFailure):
            return f"{self.path.name} under TRITON_INTERPRET=1 failed:\n{excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"{self.path.name} under TRITON_INTERPRET=1"


class InterpretedFailure(Exception):
    """The interpreted subprocess reported failures (its output is the message)."""


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for the module's tests (training runs reduce in one order)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of three small training images."""
    from helpers import write_images

    folder = tmp_path_factory.mktemp("images")
    write_images(folder, [(48, 40), (40, 56), (64, 48)])
    return folder


@pytest.fixture
def read_only(tmp_path):
    """A folder without write permission (skips where this process may write there anyway, as root may)."""
    import tempfile

    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except PermissionError:
        yield folder
    else:
        pytest.skip("this process writes into read-only folders (root)")
    finally:
        folder.chmod(0o755)


@pytest.fixture
def exact_fp32():
    """fp32 convolutions and matmuls in full fp32 for one test, then the settings as they were. On
    Ampere and later, cuDNN runs fp32 convolutions in TF32 by default (10-bit mantissas): a 1-ulp
    difference between two paths' inputs then grows to about 1e-3 after a few layers, and a parity
    test of two fp32 paths would measure TF32, not the paths."""
    import torch

    precision = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = [p.fp32_precision for p in precision]
    for p in precision:
        p.fp32_precision = "ieee"
    yield
    for p, value in zip(precision, saved):
        p.fp32_precision = value
