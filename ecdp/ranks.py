"""Inference across processes under torchrun: each rank takes every world-th item, results meet on every rank.

Without torchrun (no WORLD_SIZE above 1) there is one rank and nothing is communicated. Under
torchrun the processes join one group (gloo on the CPU, NCCL on GPUs, one GPU per local rank).
"""
import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's rank among `world`, and the device it runs on."""

    rank: int
    world: int
    device: str

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


@contextlib.contextmanager
def ranks(device):
    """The Ranks of this process on `device` ("cuda" becomes cuda:LOCAL_RANK under torchrun)."""
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    on_gpu = str(device).startswith("cuda")
    if world > 1 and on_gpu:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if on_gpu else "gloo")
    try:
        yield Ranks(rank, world, device)
    finally:
        if world > 1:
            dist.destroy_process_group()
