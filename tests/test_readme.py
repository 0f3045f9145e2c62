"""The README's examples, run as pasted, in order, in a fresh folder.

Every ```bash and ```python block runs, unless the line before it is a comment
``<!-- not run by the tests: REASON -->`` (a GPU, TensorRT or data the machine lacks). Commands that
install the package or run this suite are skipped: the suite runs in an installed checkout.
"""
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SKIP = re.compile(r"<!-- not run by the tests: (?P<reason>\S.*?) -->")
BLOCK = re.compile(r"^```(?P<lang>\w*)\n(?P<body>.*?)^```", re.S | re.M)
INSTALL_OR_SUITE = re.compile(r"^\s*(pip install|python -m pytest)\b")


def readme_blocks():
    """(language, code, skip reason or None, line number) of every fenced block of README.md."""
    text = (ROOT / "README.md").read_text()
    blocks = []
    for match in BLOCK.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.fullmatch(before.strip())
        line = text.count("\n", 0, match.start()) + 1
        blocks.append((match["lang"], match["body"], skip["reason"] if skip else None, line))
    return blocks


def shell_commands(code):
    """The commands of a bash block, continuation lines joined, without install and test-suite commands."""
    joined = re.sub(r"\s*\\\n\s*", " ", code)
    commands = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        parts = [part for part in line.split("&&") if part.strip() and not INSTALL_OR_SUITE.match(part)]
        if parts:
            commands.append(" && ".join(part.strip() for part in parts))
    return commands


def test_every_skipped_block_says_why():
    blocks = readme_blocks()
    assert any(lang in ("bash", "python") and reason is None for lang, _, reason, _ in blocks)
    for lang, code, reason, line in blocks:
        if reason is not None:
            assert lang in ("bash", "python", "cpp"), f"README line {line}: a skip marker on a {lang!r} block"


def test_shell_commands_skip_installs_and_join_lines():
    code = "pip install x -e . && ecdp demo\n# a comment\necdp eval --data a \\\n    b   # scores\n"
    assert shell_commands(code) == ["ecdp demo", "ecdp eval --data a b"]


@pytest.mark.slow
def test_readme_examples_run_as_pasted(tmp_path):
    """Run each runnable block in README order in one folder, as a user pasting them would (with -s it
    prints each command's time: a transcript)."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ran = 0
    for lang, code, reason, line in readme_blocks():
        if reason is not None or lang not in ("bash", "python"):
            continue
        if lang == "python":
            runs = [[sys.executable, "-c", code]]
        else:
            runs = [["bash", "-e", "-c", command] for command in shell_commands(code)]
        for args in runs:
            start = time.monotonic()
            result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
            assert result.returncode == 0, (f"README line {line}: {args[-1][:200]!r} exited {result.returncode}\n"
                                            f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
            print(f"{time.monotonic() - start:7.1f} s  README line {line}: {args[-1].splitlines()[0][:110]}")
            ran += 1
    assert ran >= 10
