"""The torchrun process group, as training, mining and evaluation all see it: join it, know this process's place
in it, split work between ranks, and leave it.

Torchtune's layout: every tool's ``main`` runs inside ``with joined_process_group(timeout) as info:``, which reads
what torchrun (or slurm through ``shell/torchrun.sh``) put in the environment and joins the default group (NCCL
when CUDA is available, gloo otherwise, always with a collective timeout so that a dead rank fails the job instead
of hanging it), and destroys the group when the tool is done. Everything else asks this module instead of
``torch.distributed``: ``RankInfo.current()`` is the single answer to "which rank am I, of how many, on which
device" (rank 0 of 1 without an initialised group), :func:`is_distributed` whether there is a group at all,
:func:`barrier` waits for the other ranks (a no-op alone), :func:`collective_device` is where a collective's
tensors must live, and :func:`shard_range` is the one way work is split between ranks.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["RankInfo", "barrier", "collective_device", "is_distributed", "joined_process_group", "shard_range"]


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


def shard_range(n: int, rank: int, world: int) -> range:
    """Contiguous, balanced ``range`` of ``n`` items owned by ``rank``."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def barrier() -> None:
    """Wait until every rank gets here (under the group's timeout); a no-op without a group."""
    if is_distributed():
        dist.barrier()


def collective_device() -> torch.device:
    """Where the tensors of a collective on the default group must be: the current CUDA device under NCCL, else the
    CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _join(timeout: timedelta, use_deepspeed: bool) -> RankInfo:
    """Set this process's CUDA device from ``LOCAL_RANK`` and, when torchrun started several processes and no group
    is joined yet, join the default one (through ``deepspeed.init_distributed`` with ``use_deepspeed``)."""
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


@contextmanager
def joined_process_group(timeout: timedelta, use_deepspeed: bool = False) -> Iterator[RankInfo]:
    """Run a tool's body inside the process group torchrun describes (NCCL with CUDA, else gloo, collectives bounded
    by ``timeout``), yielding this process's :class:`RankInfo`; a single process runs without a group.

    The group is destroyed when the body finishes (a gloo group left to interpreter exit can abort the process).
    When the body raises, it is left to process exit: destroying a group after a failed or timed-out collective
    can hang, and the error must reach the user."""
    info = _join(timeout, use_deepspeed)
    yield info
    if is_distributed():
        dist.destroy_process_group()
