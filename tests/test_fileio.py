"""Output checks and atomic writes: one sentence per I/O error, no temporaries left behind."""
import os
import subprocess
import sys

import pytest

from ecdp.errors import UserError
from ecdp.fileio import atomic_path, check_writable, os_errors, remove_stale_temporaries
from helpers import dead_pid



def test_writable_folder_and_file_are_created_without_leftovers(tmp_path):
    assert check_writable(tmp_path / "a" / "b", folder=True) == tmp_path / "a" / "b"
    check_writable(tmp_path / "c" / "out.onnx")
    assert (tmp_path / "a" / "b").is_dir() and (tmp_path / "c").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == [] and list((tmp_path / "c").iterdir()) == []


def test_a_file_where_a_folder_is_needed(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match=r"^cannot write .*afile/run: .*afile is a file, not a folder\.$"):
        check_writable(tmp_path / "afile" / "run", folder=True)
    with pytest.raises(UserError, match=r"^cannot write .*afile/deep/out.onnx: .*afile is a file, not a folder\.$"):
        check_writable(tmp_path / "afile" / "deep" / "out.onnx")
    with pytest.raises(UserError, match=r"^cannot write .*afile: .*afile is a file, not a folder\.$"):
        check_writable(tmp_path / "afile", folder=True)
    assert (tmp_path / "afile").read_text() == "x"


def test_a_folder_where_a_file_is_needed(tmp_path):
    with pytest.raises(UserError, match=r"^cannot write .*: it is a folder; give a file name\.$"):
        check_writable(tmp_path)


def test_a_read_only_folder_is_named_with_the_reason(read_only):
    with pytest.raises(UserError, match=r"^cannot write .*read-only/run: Permission denied\.$"):
        check_writable(read_only / "run", folder=True)
    with pytest.raises(UserError, match=r"^cannot write .*read-only/out.onnx: Permission denied\.$"):
        check_writable(read_only / "out.onnx")
    with pytest.raises(UserError, match=r"^cannot write .*read-only: Permission denied\.$"):
        check_writable(read_only, folder=True)
    assert list(read_only.iterdir()) == []


def test_io_errors_of_a_write_are_one_sentence_with_the_path(tmp_path):
    with pytest.raises(UserError, match=r"^cannot write .*out.bin: No space left on device\.$"):
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(28, os.strerror(28))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="not an I/O error"), os_errors(tmp_path):
        raise ValueError("not an I/O error")


def test_full_file_system_during_a_write(tmp_path):
    """A file size limit makes the OS refuse the write, as a full disk does."""
    script = ("import resource, sys\nfrom ecdp.fileio import atomic_path\nfrom ecdp.errors import UserError\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
              "try:\n    with atomic_path(sys.argv[1]) as tmp:\n        tmp.write_bytes(bytes(5000))\n"
              "except UserError as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "big.bin")], capture_output=True, text=True)
    assert result.stdout.strip() == f"cannot write {tmp_path / 'big.bin'}: File too large."
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_removes_the_temporaries_of_killed_processes_only(tmp_path):
    dead, alive = dead_pid(), os.getppid()
    stale = [tmp_path / f".out.png.{dead}.abcd_123.png", tmp_path / f".out.png.{os.getpid()}.zzzzzzzz.png"]
    kept = [tmp_path / f".out.png.{alive}.abcd_123.png",       # a writer that is still running
            tmp_path / f".other.png.{dead}.abcd_123.png",      # another output's
            tmp_path / f".out.png.txt.{dead}.abcd_123.txt",    # another output's, with a longer name
            tmp_path / "notes.txt"]
    for path in stale + kept:
        path.write_text("x")
    with atomic_path(tmp_path / "out.png") as tmp:
        tmp.write_text("new")
    assert (tmp_path / "out.png").read_text() == "new"
    assert sorted(tmp_path.iterdir()) == sorted(kept + [tmp_path / "out.png"])


def test_stale_temporary_folders_are_removed(tmp_path):
    dead = dead_pid()
    (tmp_path / f".step-00000003.{dead}.k2j4_x9a" / "sub").mkdir(parents=True)
    (tmp_path / "step-00000002").mkdir()
    remove_stale_temporaries(tmp_path, r"step-\d+")
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000002"]


def test_atomic_write_keeps_the_old_file_when_the_block_fails(tmp_path):
    (tmp_path / "out.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"] and (tmp_path / "out.txt").read_text() == "old"


def test_temporaries_of_the_writer_inside_a_killed_write_are_removed(tmp_path):
    """A writer may make its own temporaries beside the file it writes (safetensors does): they lie in
    the temporary folder of the write, which the next write removes."""
    script = ("import os, signal, sys\nfrom pathlib import Path\nfrom ecdp.fileio import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n    (tmp.parent / '.tmpAb12Cd').write_text('half')\n"
              "    tmp.write_text('half')\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "model.safetensors")])
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".model.safetensors.") and (left / ".tmpAb12Cd").is_file()
    with atomic_path(tmp_path / "model.safetensors") as tmp:
        tmp.write_text("whole")
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
