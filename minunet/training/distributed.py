"""Data parallelism with torch.distributed, for `torchrun --nproc_per_node N -m minunet train-tiny ...` and
`minunet generate --prompts FILE` under torchrun. Without torchrun's environment (RANK, WORLD_SIZE) everything here
is the one-process case and torch.distributed is never initialised.

Equal results for any number of ranks: a step's global batch of B samples is cut into N equal contiguous shards,
every random draw of a step is made for the whole global batch from a generator seeded by the step (then sliced),
each rank's loss is its shard's mean, and DDP averages the gradients, so the update is the one-process update of
batch B up to float summation order.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self):  # rank 0 logs, draws progress bars and writes files
        return self.rank == 0

    def shard(self, global_batch):
        """The slice of a global batch this rank trains on (B must divide evenly)."""
        if global_batch % self.size:
            raise ValueError(f"--batch-size {global_batch} must be a multiple of the number of ranks ({self.size})")
        n = global_batch // self.size
        return slice(self.rank * n, (self.rank + 1) * n)

    def split(self, items):
        """Items i with i % size == rank (generation: each prompt handled by exactly one rank)."""
        return [(i, x) for i, x in enumerate(items) if i % self.size == self.rank]

    def barrier(self):
        if self.size > 1:
            dist.barrier()


def launched():
    """True under torchrun (its environment variables are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def start(device=None):
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA); the World of this process."""
    if not launched():
        return World(device=torch.device(device or "cpu"))
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=size)
    return World(rank, size, dev)


def stop(world):
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module, world):
    """DDP around a module when there are several ranks, else the module itself."""
    if world.size == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def broadcast_flag(flag, world):
    """Rank 0's boolean on every rank (a resume decision, so that all ranks take the same path)."""
    if world.size == 1:
        return flag
    t = torch.tensor([int(flag)], device=world.device)
    dist.broadcast(t, 0)
    return bool(t.item())
