"""What our commands print while they work: progress, stages, and no library noise.

- ``progress(total, desc=..., unit=...)``: a tqdm bar when stderr is a terminal and tqdm is
  installed; otherwise one line per finished item (``upscale: tile 3 of 8 done, 12 s, about 20 s
  left``), so logs stay readable; with lines every N items, also one whenever SILENT_SECONDS pass
  without one. The package runs without tqdm (a bare checkout on a GPU machine has none).
- ``write(message)``: one line on stderr that does not break a bar being drawn.
- ``stage(message)``: a line when a long step starts, and how long it took when it ends.
- ``set_quiet(True)`` (``--quiet``) silences both; errors are still printed by the commands.
- ``silence_library_warnings()``: the FutureWarnings and logged warnings that PyTorch's exporters
  print about themselves, which say nothing about the user's input.
- ``ArgumentParser``: argparse's parser whose option errors are one sentence and exit status 1,
  like every other error of our commands.
"""
import argparse
import contextlib
import logging
import sys
import time
import warnings

_quiet = False
SILENT_SECONDS = 30
"""The longest a progress counter that prints every N items stays silent while items finish."""


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser (and its subcommands' parsers) that reports a bad option as
    ``PROG: error: MESSAGE`` on one line and exits with status 1, without the usage block."""

    def error(self, message):
        self.exit(1, f"{self.prog}: error: {message}\n")


def set_quiet(quiet: bool) -> None:
    """Silence (True) or restore (False) progress and stage lines for the whole process."""
    global _quiet
    _quiet = bool(quiet)


def progress(total: int | None = None, *, desc: str, unit: str = "it", disable: bool = False, initial: int = 0,
             every: int = 1):
    """A progress counter with ``update(n=1)``, ``set_postfix(**values)`` and ``close()``, usable as a
    context manager.

    total: the number of items, or None when unknown; initial: those already done (a resumed run).
    On a terminal with tqdm installed it is a tqdm bar on stderr; elsewhere it prints a line after
    every ``every`` items, after the last, and after any item that ends SILENT_SECONDS or more after
    the last line; with disable (e.g. on all ranks but the first) or under ``set_quiet(True)``,
    nothing.
    """
    tqdm = _tqdm()
    if tqdm is not None and sys.stderr.isatty() and not (_quiet or disable):
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
    return LineProgress(total, desc=desc, unit=unit, initial=initial, every=every, silent=_quiet or disable)


def write(message: str) -> None:
    """Print `message` as one line on stderr, above a progress bar if one is being drawn."""
    tqdm = _tqdm()
    if tqdm is not None:
        tqdm.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)


def _tqdm():
    """tqdm's bar class, or None where tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class LineProgress:
    """Lines on stderr as items finish: count, the postfix values, elapsed seconds and, with a total,
    the time left; nothing when silent."""

    def __init__(self, total: int | None, *, desc: str, unit: str, initial: int = 0, every: int = 1,
                 silent: bool = False):
        self.total, self.desc, self.unit, self.every, self.silent = total, desc, unit, max(1, every), silent
        self.n = self.initial = initial
        self.start = self.printed = time.monotonic()
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.silent:
            return
        if self.n % self.every and self.n != self.total and now - self.printed < SILENT_SECONDS:
            return
        self.printed = now
        elapsed = now - self.start
        count = f"{self.unit} {self.n} of {self.total}" if self.total else f"{self.unit} {self.n}"
        left = ""
        if self.total and self.n < self.total:
            left = f", about {elapsed / (self.n - self.initial) * (self.total - self.n):.0f} s left"
        print(f"{self.desc}: {count} done{self.postfix}, {elapsed:.0f} s{left}", file=sys.stderr, flush=True)

    def set_postfix(self, **values) -> None:
        """Values shown on the following lines, as tqdm shows them beside its bar."""
        self.postfix = "".join(f", {key} {value}" for key, value in values.items())

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def stage(message: str):
    """Print ``message ...`` at once, then ``message: done in N s`` when the block ends without error."""
    if not _quiet:
        print(f"{message} ...", file=sys.stderr, flush=True)
    start = time.monotonic()
    yield
    if not _quiet:
        print(f"{message}: done in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)


def silence_library_warnings() -> None:
    """Hide PyTorch's FutureWarnings and its exporters' logged warnings (e.g. about torchvision).

    Imports torch: its logging set-up would otherwise reset the levels set here.
    """
    import torch._logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch._logging.set_logs(onnx=logging.ERROR, export=logging.ERROR)
