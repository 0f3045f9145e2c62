"""What the commands print while they work: progress lines, stages, --quiet, instant --help."""
import statistics
import subprocess
import sys
import time

import pytest

from ecdp import console
from ecdp.cli import COMMANDS
from ecdp.cli import main as ecdp_main
from ecdp.export import cli as export_cli

HELPS = [["ecdp", "--help"], *(["ecdp", name, "--help"] for name in COMMANDS), ["ecdp-export", "--help"]]
ENTRY = {"ecdp": "from ecdp.cli import main", "ecdp-export": "from ecdp.export.cli import main"}


@pytest.fixture(autouse=True)
def loud():
    console.set_quiet(False)
    yield
    console.set_quiet(False)


def test_progress_off_a_terminal_is_one_line_per_item(capsys):
    with console.progress(3, desc="upscale", unit="tile") as bar:
        for _ in range(3):
            bar.update()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == [f"upscale: tile {i} of 3 done" for i in (1, 2, 3)]
    assert "s left" in lines[0] and "s left" not in lines[-1]


def test_progress_without_a_total_counts(capsys):
    bar = console.progress(None, desc="sampling", unit="network evaluation")
    bar.update()
    bar.update()
    assert capsys.readouterr().err.splitlines()[-1].startswith("sampling: network evaluation 2 done, ")


def test_quiet_prints_no_progress_and_no_stages(capsys):
    console.set_quiet(True)
    with console.stage("compiling"), console.progress(2, desc="upscale", unit="tile") as bar:
        bar.update(2)
    assert capsys.readouterr().err == ""


def test_without_tqdm_a_terminal_gets_lines_and_messages_still_print(monkeypatch, capsys):
    """A bare checkout (the GPU machine has no tqdm) reports progress as it does off a terminal."""
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with console.progress(2, desc="train", unit="step") as bar:
        bar.update()
        console.write("ecdp train: resumed")
        bar.update()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == ["train: step 1 of 2 done", "ecdp train: resumed",
                                                      "train: step 2 of 2 done"]


def test_stage_says_when_it_starts_and_how_long_it_took(capsys):
    with console.stage("tracing the solve"):
        assert capsys.readouterr().err == "tracing the solve ...\n"
    assert capsys.readouterr().err.startswith("tracing the solve: done in ")


def _help_script(argv):
    """A Python one-liner that answers ``argv`` (a command and its arguments) and lists whether torch loaded."""
    return (f"import sys; {ENTRY[argv[0]]}\ntry:\n    main({argv[1:]!r})\nexcept SystemExit:\n    pass\n"
            "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded', file=sys.stderr)")


@pytest.mark.parametrize("argv", HELPS, ids=" ".join)
def test_help_does_not_load_torch(argv):
    result = subprocess.run([sys.executable, "-c", _help_script(argv)], capture_output=True, text=True)
    assert "usage:" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "torch not loaded"


def _median_seconds(args, runs=3):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(args, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_help_costs_a_few_python_start_ups():
    """`ecdp --help` against `python -c pass` in the same run: importing torch alone costs over 50 of them."""
    baseline = _median_seconds([sys.executable, "-c", "pass"])
    ratio = max(_median_seconds([sys.executable, "-m", "ecdp", *argv[1:]]) for argv in HELPS[:2]) / baseline
    assert ratio < 20


def test_export_help_works_without_the_export_extra():
    script = "import sys\nfor name in ('onnx', 'onnxscript', 'onnxruntime'):\n    sys.modules[name] = None\n"
    script += _help_script(["ecdp-export", "--help"])
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0 and "--onnx MODEL" in result.stdout


@pytest.mark.parametrize("target", ["--onnx", "--trt"])
def test_missing_export_extra_is_one_sentence(tmp_path, capsys, monkeypatch, target):
    real = export_cli.importlib.util.find_spec
    monkeypatch.setattr(export_cli.importlib.util, "find_spec", lambda name: None if name == "onnx" else real(name))
    out = tmp_path / "sr.onnx"
    assert export_cli.main([target, "default", "-o", str(out)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f'ecdp-export: error: {target} needs the export extra, and onnx is not installed: '
                     'run pip install -e ".[export]" in the ecdp folder.']
    assert list(tmp_path.iterdir()) == []


def test_training_off_a_terminal_logs_a_line_per_logging_interval(tmp_path, capsys):
    from ecdp.cli import main
    from helpers import write_images
    from helpers import BASE, TINY

    write_images(tmp_path / "images", [(48, 40), (40, 56)])
    settings = [*BASE, "train.log_every=2", "train.steps=4"]
    assert main(["train", "--config", TINY, "--data", str(tmp_path / "images"), "--out", str(tmp_path / "run"),
                 "--device", "cpu", "--set", *settings]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("score: ")]
    assert [line.split(", loss")[0] for line in lines] == ["score: step 2 of 4 done", "score: step 4 of 4 done"]
    assert all(float(line.split(", loss ")[1].split(",")[0]) > 0 for line in lines)


def test_the_command_keeps_freed_memory_where_glibc_allows():
    """In a child process: the setting would stay with the test process."""
    import platform
    import subprocess
    import sys

    code = "from ecdp.cli import keep_freed_memory; print(keep_freed_memory())"
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert printed.strip() == str(glibc)


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("target, argv, line", [
    ("ecdp.cli.importlib.import_module", ["upscale", "in.png", "-o", "out.png"], "ecdp: interrupted"),
    ("ecdp.cli.keep_freed_memory", ["upscale", "in.png", "-o", "out.png"], "ecdp upscale: interrupted"),
    ("ecdp.console.silence_library_warnings", ["--onnx", "default", "-o", "out.onnx"], "ecdp-export: interrupted"),
])
def test_ctrl_c_while_a_command_starts_is_one_line(monkeypatch, capsys, target, argv, line):
    """Ctrl-C while the command loads its modules or PyTorch: one line and status 130, no traceback."""
    monkeypatch.setattr(target, _interrupt)
    main = export_cli.main if argv[0] == "--onnx" else ecdp_main
    assert main(argv) == 130
    assert capsys.readouterr().err.splitlines() == [line]


def test_progress_every_n_items_still_speaks_when_items_are_slow(capsys, monkeypatch):
    """Slow steps logged every 10: a line as soon as SILENT_SECONDS pass without one, not only at step 10."""
    clock = iter(range(0, 1000, 20))   # every item takes 20 s
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    with console.progress(5, desc="quality", unit="step", every=10) as bar:
        for _ in range(5):
            bar.update()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == ["quality: step 2 of 5 done", "quality: step 4 of 5 done",
                                                      "quality: step 5 of 5 done"]
