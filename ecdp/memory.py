"""Memory: what the machine and this process may still use, and work refused before it would run out.

Work whose size is known ahead (decoding an image, the result of an upscale) is checked against
``available_memory`` before it allocates; an allocator error that happens anyway (numpy's or
Pillow's MemoryError, PyTorch's out-of-memory errors) is turned into one sentence by
``memory_errors``, so that it ends one file's work and not the program.
"""
import contextlib
import os
import resource

from ecdp.errors import UserError

GB = 1e9


def physical_memory() -> int | None:
    """Bytes of RAM of this machine, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory(device=None) -> int | None:
    """Bytes this process may still allocate on `device` (default the CPU), or None when unknown.

    CPU: the least of the system's available memory (MemAvailable) and what the address-space
    limit (``ulimit -v``) leaves above the process's current size. CUDA: the device's free memory.
    """
    if device is not None and getattr(device, "type", str(device).split(":")[0]) == "cuda":
        import torch

        return torch.cuda.mem_get_info(device)[0]
    limits = [_meminfo("MemAvailable")]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        size = _own_status("VmSize")
        limits.append(None if size is None else max(soft - size, 0))
    known = [n for n in limits if n is not None]
    return min(known) if known else None


def require_memory(nbytes: float, what: str, device=None) -> None:
    """Raise a UserError saying that `what` ('decoding it', ...) needs `nbytes` bytes when fewer are
    available (see available_memory); nothing when the amount available is unknown."""
    available = available_memory(device)
    if available is not None and nbytes > available:
        raise UserError(f"{what} needs {size(nbytes)} of memory and {size(available)} are available")


def size(nbytes: float) -> str:
    """A number of bytes in words: '35.2 GB', '12.5 MB'."""
    return f"{nbytes / GB:.1f} GB" if nbytes >= 0.1 * GB else f"{nbytes / 1e6:.1f} MB"


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an exception is an allocator's out-of-memory: MemoryError (numpy, Pillow), CUDA's
    OutOfMemoryError, or the RuntimeError of PyTorch's CPU allocator."""
    if isinstance(error, MemoryError):
        return True
    text = str(error)
    return (type(error).__name__ == "OutOfMemoryError" or isinstance(error, RuntimeError)
            and ("DefaultCPUAllocator" in text or "out of memory" in text))


@contextlib.contextmanager
def memory_errors(message: str):
    """Raise an allocator's out-of-memory error in the block as the UserError `message` (one sentence
    naming what ran out: 'IN.png: not enough memory to decode it'); other errors pass unchanged."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        raise UserError(message) from None


def _meminfo(key):
    return _field("/proc/meminfo", key)


def _own_status(key):
    return _field("/proc/self/status", key)


def _field(path, key):
    """The value in bytes of a 'Key: N kB' line of a /proc file, or None."""
    try:
        with open(path) as f:
            for line in f:
                name, _, value = line.partition(":")
                if name == key:
                    return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
