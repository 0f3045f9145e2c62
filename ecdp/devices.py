"""Device names from users, checked before anything runs on them."""
import torch

from ecdp.errors import UserError

KINDS = ("cpu", "cuda")


def checked_device(name: "str | torch.device") -> torch.device:
    """The torch.device of `name` ("cpu", "cuda", "cuda:1", ...), after checking that this machine has
    it. Raises UserError, in one sentence naming it, for a name that is no device, a kind other than
    KINDS, or a GPU that is not there."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"{name!r} is not a device name (try cpu or cuda)") from None
    if device.type not in KINDS:
        raise UserError(f"device {name} is not supported; use {' or '.join(KINDS)}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name} is not available: no CUDA GPU was found")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(f"device {name} is not available: this machine has {count} CUDA GPU{'s' * (count > 1)}")
    return device
