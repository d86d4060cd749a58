"""Cross-rank gathers of representations for the global contrastive loss (GradCache and the plain path).

Every rank computes the loss of the GLOBAL batch: representations are all-gathered in rank order (multi-vector
ones padded to the longest token count over all ranks), and the positives mask becomes block-diagonal over ranks.
:func:`all_gather_with_grad` keeps this rank's slot differentiable, so backpropagating the global loss gives this
rank's share of the full-batch gradient; summed over ranks (what the strategies arrange) it is the full gradient.
Without a process group every function returns its input.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from retriever.model.embeddings import Embeddings, MultiVector, cat_embeddings, pad_tokens
from retriever.process_group import RankInfo, is_distributed

__all__ = ["all_gather_with_grad", "gather_block_diagonal", "gather_reps"]


def _gather_padded(tensor: Tensor) -> list[Tensor]:
    """All-gather tensors whose shapes differ across ranks (any dim); returns each rank's unpadded tensor."""
    world = RankInfo.current().world
    shape = torch.tensor(tensor.shape, dtype=torch.long, device=tensor.device)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    max_shape = torch.stack(shapes).amax(dim=0).tolist()
    pad: list[int] = []
    for have, want in zip(reversed(tensor.shape), reversed(max_shape)):
        pad += [0, want - have]
    padded = nn.functional.pad(tensor, pad) if any(pad) else tensor.contiguous()
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    return [o[tuple(slice(0, s) for s in sh.tolist())] for o, sh in zip(out, shapes)]


def _gather_bool(mask: Tensor) -> list[Tensor]:
    return [m.to(torch.bool) for m in _gather_padded(mask.to(torch.uint8))]


def gather_reps(reps: Embeddings) -> tuple[Embeddings, list[int]]:
    """All-gather (detached) reps from every rank in rank order; returns ``(global reps, per-rank counts)``.

    MultiVectors are padded to the longest token count over all ranks. Single process: returns the input.
    """
    if not is_distributed():
        n = (reps.emb if isinstance(reps, MultiVector) else reps).shape[0]
        return reps, [n]
    if not isinstance(reps, MultiVector):
        parts = _gather_padded(reps.detach())
        return torch.cat(parts), [p.shape[0] for p in parts]
    embs = _gather_padded(reps.emb.detach())
    masks = _gather_bool(reps.mask)
    parts = [MultiVector(e, m) for e, m in zip(embs, masks)]
    return cat_embeddings(parts), [e.shape[0] for e in embs]


def all_gather_with_grad(reps: Embeddings) -> tuple[Embeddings, list[int]]:
    """Like :func:`gather_reps`, but this rank's slot keeps its autograd graph (other ranks' slots are constants).

    Backpropagating a loss on the result gives this rank's share of the global gradient; sum over ranks (what
    :meth:`Strategy.backward` arranges) gives the full-batch gradient.
    """
    gathered, counts = gather_reps(reps)
    if not is_distributed():
        return reps, counts
    rank = RankInfo.current().rank
    start = sum(counts[:rank])
    if not isinstance(reps, MultiVector):
        return torch.cat([gathered[:start], reps, gathered[start + counts[rank]:]]), counts
    local = pad_tokens(reps, gathered.emb.shape[1])
    emb = torch.cat([gathered.emb[:start], local.emb, gathered.emb[start + counts[rank]:]])
    return MultiVector(emb, gathered.mask), counts


def gather_block_diagonal(mask: Tensor) -> Tensor:
    """Global ``[sum B_r, sum P_r]`` positives mask: each rank's local mask on the diagonal."""
    if not is_distributed():
        return mask.to(torch.bool)
    return torch.block_diag(*_gather_bool(mask))
