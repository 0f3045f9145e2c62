"""pytest configuration of the benchmarks: collection of bench_*.py, CPU threads, the device timer,
the model fixture, and the floor fractions added when the JSON is written."""
import pytest
import torch

from bench import harness
from bench.roofline import add_floor_fractions


def pytest_configure(config):
    torch.set_num_threads(harness.THREADS)


def pytest_collect_file(file_path, parent):
    """bench_*.py files, unless named on the command line (pytest collects those itself)."""
    named = parent.session.isinitpath(file_path)
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not named:
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name.startswith("bench_"):
            item.add_marker(pytest.mark.benchmark(timer=harness.timer))


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info.update(device=harness.device_name(), torch=torch.__version__)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    add_floor_fractions(output_json["benchmarks"])


@pytest.fixture(scope="session")
def models():
    """models(name, device) -> (net, config, description), each loaded once."""
    loaded = {}

    def get(name, device=harness.DEVICE):
        if (name, device) not in loaded:
            loaded[name, device] = harness.load(name, device)
        return loaded[name, device]

    return get
