"""torchrun / DDP set-up that also works as one plain CPU or GPU process.

Launched by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set), :func:`init_distributed`
joins the process group (NCCL on CUDA, gloo on CPU) and pins each process to GPU
``LOCAL_RANK``; launched as ``python -m ...`` it runs as a single process with no group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: ``cuda:LOCAL_RANK`` when CUDA is available, else CPU; otherwise as given."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def init_distributed(device: str = "auto") -> DistEnv:
    """Initialise the process group when launched by torchrun; return rank, world size, device."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank = int(os.environ["RANK"])
        size = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        dev = resolve_device(device, local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not is_dist():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        return DistEnv(rank, size, local_rank, dev)
    return DistEnv(0, 1, 0, resolve_device(device, 0))


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over processes (identity in a single process)."""
    if not is_dist() or dist.get_world_size() == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def barrier() -> None:
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
