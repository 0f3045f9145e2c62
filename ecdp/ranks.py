"""This process's place among the processes of one run under torchrun, for inference and training.

Without torchrun (no WORLD_SIZE above 1) there is one rank and nothing is communicated. Under
torchrun the processes join one group (gloo on the CPU, NCCL on GPUs, one GPU per local rank).
Inference: each rank takes every world-th item and the results meet on every rank (share,
gather, total). Training: DDP over the group (ecdp.train).
"""
import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ecdp.devices import checked_device


@dataclass(frozen=True)
class Ranks:
    """This process's rank among `world`, and the device it runs on."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes files and prints."""
        return self.rank == 0

    def share(self, items):
        """This rank's part of a list: every world-th item, from the rank-th on."""
        return list(items)[self.rank::self.world]

    def total(self, count):
        """The sum of an integer over all ranks."""
        if self.world == 1:
            return count
        value = torch.tensor([count], dtype=torch.int64, device=self.device)
        dist.all_reduce(value)
        return int(value.item())

    def gather(self, items):
        """The concatenation over all ranks of a list of picklable items made by this program, on every rank."""
        if self.world == 1:
            return list(items)
        parts = [None] * self.world
        dist.all_gather_object(parts, list(items))
        return [item for part in parts for item in part]


def join(device=None) -> Ranks:
    """Join the torchrun group (WORLD_SIZE, RANK, LOCAL_RANK), or be the only rank.

    device: a device name; default CUDA when available, else the CPU; checked first, before the group
    is joined (``ecdp.devices.checked_device``). On CUDA under torchrun each process takes the GPU of
    its local rank (cuda:LOCAL_RANK), and becomes its current device.
    """
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    device = checked_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        device = checked_device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) if world > 1 else device.index or 0}")
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(rank, world, device)


def leave(process: Ranks) -> None:
    """Leave the group that join joined (nothing for a single rank)."""
    if process.world > 1:
        dist.destroy_process_group()


@contextlib.contextmanager
def ranks(device=None):
    """The Ranks of this process (see join), the group left on exit."""
    process = join(device)
    try:
        yield process
    finally:
        leave(process)
