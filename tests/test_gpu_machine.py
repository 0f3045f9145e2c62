"""What runs on the GPU machine (the device command, the CUDA tests, the training script, the
sampler study) imports with only the packages that machine has: bench/gpu/requirements.txt."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")   # Python 3.11+

ROOT = Path(__file__).parent.parent
MODULE = {"pillow": "PIL", "pyyaml": "yaml", "scikit-image": "skimage"}   # where a module is not named as its package
GPU_RUNS = ["ecdp.cli", "ecdp.train", "ecdp.commands.train", "ecdp.commands.eval", "ecdp.commands.upscale",
            "ecdp.commands.demo", "bench.gpu.device", "bench.gpu.train_plan", "bench.gpu_kernels", "bench.sampler_study",
            "bench.kernel_count"]
GPU_TESTS = ["tests/test_cuda.py", "tests/test_engine.py", "tests/test_train_script.py"]


def _packages(requirements):
    """Package names, lower case, from requirement strings ("ray[serve]>=2" -> "ray")."""
    return {re.split(r"[\[<>=!~;\s]", line.strip(), maxsplit=1)[0].lower() for line in requirements
            if line.strip() and not line.lstrip().startswith("#")}


def missing_on_the_gpu_machine():
    """Top-level module names of the project's dependencies (extras included) that the GPU machine lacks."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ours = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    there = (ROOT / "bench" / "gpu" / "requirements.txt").read_text().splitlines()
    return sorted(MODULE.get(name, name.replace("-", "_")) for name in _packages(ours) - _packages(there) - {"ecdp"})


def run_without(missing, code):
    """Run `code` in a fresh interpreter at the repository root in which `missing` cannot be imported."""
    guard = f"import sys\nsys.modules.update(dict.fromkeys({sorted(missing)!r}))\n"   # None: not importable
    return subprocess.run([sys.executable, "-c", guard + code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_list_names_what_the_project_asks_for_beyond_the_gpu_machine():
    missing = missing_on_the_gpu_machine()
    assert "tqdm" in missing and "starlette" in missing and "torch" not in missing and "yaml" not in missing


def test_the_gpu_runs_import_without_the_other_dependencies():
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in GPU_RUNS)
    result = run_without(missing_on_the_gpu_machine(), code)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_gpu_tests_collect_without_the_other_dependencies():
    code = f"import pytest\nsys.exit(pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', *{GPU_TESTS!r}]))\n"
    result = run_without(missing_on_the_gpu_machine(), code)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_the_guard_does_block():
    """The check can fail: a run that needs a blocked package does."""
    result = run_without(["tqdm"], "import tqdm\n")
    assert result.returncode != 0 and "ModuleNotFoundError: import of tqdm" in result.stderr
