"""The torchrun process group, as training and evaluation both see it: join it, and know this process's place.

``join_process_group`` reads what torchrun (or slurm through ``shell/torchrun.sh``) put in the environment and
joins the default group: NCCL when CUDA is available, gloo otherwise, always with a collective timeout so that a
dead rank fails the job instead of hanging it. ``RankInfo.current()`` is the single answer to "which rank am I,
of how many, on which device": without an initialised group it is rank 0 of 1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["RankInfo", "is_distributed", "join_process_group"]


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


@dataclass(frozen=True)
class RankInfo:
    """This process's rank, the world size, its local rank on the node and the device it computes on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> RankInfo:
        """Rank and world of the default group (0 of 1 without one); the CUDA device of ``LOCAL_RANK`` if any."""
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        if is_distributed():
            return cls(dist.get_rank(), dist.get_world_size(), local_rank, device)
        return cls(0, 1, local_rank, device)


def join_process_group(timeout: timedelta, use_deepspeed: bool = False) -> RankInfo:
    """Join the process group torchrun describes (NCCL with CUDA, else gloo), with a collective timeout.

    Sets this process's CUDA device from ``LOCAL_RANK``; a no-op for a single process or a group already joined.
    With ``use_deepspeed`` the group is made through ``deepspeed.init_distributed`` (same backend and timeout).
    Returns this process's :class:`RankInfo`."""
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if use_deepspeed:
            import deepspeed

            deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
        else:
            dist.init_process_group(backend=backend, timeout=timeout)
    return RankInfo.current()
