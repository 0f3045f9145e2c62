"""Output files: checked before work starts, written atomically, I/O errors as one sentence.

An output is written into a temporary folder beside it (``.NAME.PID.RANDOM``), fsynced, renamed
onto its final name, and its folder fsynced: a crash or an error never leaves a half-written output.
The next write of the same output removes the temporaries that killed processes left behind.
"""
import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from ecdp.errors import UserError

_RANDOM = r"[a-z0-9_]{8}"  # the random part of tempfile's names


def check_writable(path, *, folder=False):
    """Check, before any work starts, that the output file ``path`` (a folder with ``folder``) can be written.

    Creates the missing folders up to the one that will hold the output, then writes and fsyncs a
    4 KiB probe there, which leaves no name behind. Returns ``path`` as a Path. Raises UserError,
    naming ``path`` and the reason: a file where a folder is needed or a folder where a file is, no
    permission, a read-only or full file system.
    """
    path = Path(path)
    if path.is_dir() and not folder:
        raise UserError(f"cannot write {path}: it is a folder; give a file name.")
    home = path if folder else path.parent
    blocker = next((p for p in (home, *home.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"cannot write {path}: {blocker} is a file, not a folder.")
    with os_errors(path):
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=home) as probe:
            probe.write(bytes(4096))
            probe.flush()
            os.fsync(probe.fileno())
    return path


@contextlib.contextmanager
def os_errors(path):
    """Raise an I/O error of the block (an OSError, or a safetensors error that wraps one) as the
    UserError 'cannot write PATH: REASON.'; other errors pass unchanged."""
    try:
        yield
    except Exception as e:
        reason = os_reason(e)
        if reason is None:
            raise
        raise UserError(f"cannot write {path}: {reason}.") from None


def os_reason(error):
    """The operating system's reason for an I/O error ('No space left on device'), or None when
    ``error`` is not one. Understands the 'os error N' that safetensors puts in its messages."""
    if isinstance(error, OSError) and error.errno is not None:
        return error.strerror or os.strerror(error.errno)
    code = re.search(r"\(os error (\d+)\)", str(error)) if type(error).__name__ == "SafetensorError" else None
    return os.strerror(int(code.group(1))) if code else None


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path of the same name as ``path``, in a temporary folder beside it (where
    the writer's own temporaries go too); if the block succeeds, fsync the file, rename it onto
    ``path`` and fsync the folder. The temporary folder is removed in any case. I/O errors (of the
    block too) are raised as UserError naming ``path``."""
    with atomic_paths(path) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(*paths):
    """atomic_path for files that go together: yield a temporary path for each of ``paths``; only when
    the block has written them all are they fsynced and renamed into place, one right after the
    other, so that an error or an interrupt while they are made leaves every earlier file as it was.
    I/O errors are raised as UserError naming the first path."""
    paths = [Path(p) for p in paths]
    folders = []
    try:
        with os_errors(paths[0]):
            for path in paths:
                path.parent.mkdir(parents=True, exist_ok=True)
                remove_stale_temporaries(path.parent, re.escape(path.name))
                folders.append(Path(tempfile.mkdtemp(prefix=temporary_prefix(path), dir=path.parent)))
            temporaries = [folder / path.name for folder, path in zip(folders, paths)]
            yield temporaries
            for tmp in temporaries:
                fsync(tmp)
            for tmp, path in zip(temporaries, paths):
                os.replace(tmp, path)
            for parent in dict.fromkeys(path.parent for path in paths):
                fsync(parent)
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def temporary_prefix(path):
    """The prefix of the temporary names of ``path``: '.NAME.PID.' in its folder."""
    return f".{Path(path).name}.{os.getpid()}."


def remove_stale_temporaries(folder, name_pattern=".+"):
    """Remove, in ``folder``, the temporaries (files or folders) of the outputs whose names match the
    regular expression ``name_pattern`` (default: any) that were made by processes no longer running."""
    pattern = re.compile(rf"\.(?:{name_pattern})\.(\d+)\.{_RANDOM}(?:\.\w+)?")
    for entry in Path(folder).iterdir():
        match = pattern.fullmatch(entry.name)
        if match and not _running(int(match.group(1))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def fsync(path):
    """Flush a file or a folder (its names) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _running(pid):
    """Whether another process ``pid`` is running. A temporary named with this process's id is a
    leftover of an earlier process that had the same id (PID 1 in a container): a process writes
    an output once at a time, and removes stale temporaries before it makes its own."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
