"""Streaming top-k over corpus chunks and its merge across ranks.

The evaluator never holds the ``queries x corpus`` score matrix: each rank scores its corpus shard chunk by
chunk and keeps, per query, only the best ``k`` (score, global corpus index) pairs seen so far
(:class:`RunningTopK`). At the end the per-rank lists are all-gathered and reduced to the global top-k
(:func:`merge_across_ranks`), a ``world_size * Nq * k`` exchange.

Selection is deterministic and independent of chunking and sharding: candidates are ordered by score
descending, ties by a per-document ``tie_key`` ascending (default: the corpus index), so 1 and N ranks keep the
same documents. The evaluators pass the rank of each document id in descending id order, which is trec_eval's
(and MTEB's) tie order, so a tie at the depth cut keeps the same documents trec_eval would rank first.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from retriever.process_group import RankInfo, collective_device

__all__ = ["RunningTopK", "merge_across_ranks", "select_topk"]

_EMPTY = -1  # index of a padding slot (a rank with fewer than k documents)


def select_topk(values: Tensor, indices: Tensor, k: int, tie_key: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Best ``k`` columns per row of ``values`` ``[Nq, C]`` (ties: smaller ``tie_key[indices]`` first)."""
    keys = indices if tie_key is None else tie_key[indices.clamp(min=0)]
    keys = torch.where(indices == _EMPTY, torch.iinfo(torch.long).max, keys)
    by_index = torch.argsort(keys, dim=1, stable=True)
    values, indices = values.gather(1, by_index), indices.gather(1, by_index)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
    return values.gather(1, order), indices.gather(1, order)


class RunningTopK:
    """Per-query best ``k`` of a stream of score chunks ``[Nq, C]`` with their global corpus indices."""

    def __init__(self, n_queries: int, k: int, tie_key: Tensor | None = None) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.tie_key = tie_key
        self.values = torch.full((n_queries, 0), float("-inf"))
        self.indices = torch.full((n_queries, 0), _EMPTY, dtype=torch.long)

    def update(self, scores: Tensor, doc_indices: Tensor) -> None:
        """Fold in ``scores [Nq, C]`` for corpus positions ``doc_indices [C]``."""
        scores = scores.detach().float().cpu()
        cols = doc_indices.to(torch.long).cpu().unsqueeze(0).expand(scores.shape[0], -1)
        self.values, self.indices = select_topk(torch.cat([self.values, scores], 1),
                                                torch.cat([self.indices, cols], 1), self.k, self.tie_key)

    def padded(self) -> tuple[Tensor, Tensor]:
        """``(values, indices)`` of shape ``[Nq, k]``; missing slots hold ``-inf`` / ``-1``."""
        missing = self.k - self.values.shape[1]
        if missing == 0:
            return self.values, self.indices
        n = self.values.shape[0]
        return (torch.cat([self.values, torch.full((n, missing), float("-inf"))], 1),
                torch.cat([self.indices, torch.full((n, missing), _EMPTY, dtype=torch.long)], 1))


def merge_across_ranks(local: RunningTopK) -> list[list[tuple[int, float]]]:
    """Global top-k per query as ``[(corpus index, score), ...]`` (best first), identical on every rank.

    Without an initialised process group this is the local result. Uses ``all_gather`` on tensors, on the
    group's :func:`~retriever.process_group.collective_device`; the group's timeout bounds the wait for a dead rank.
    """
    values, indices = local.padded()
    world = RankInfo.current().world
    if world > 1:
        device = collective_device()
        gathered_v = [torch.empty_like(values, device=device) for _ in range(world)]
        gathered_i = [torch.empty_like(indices, device=device) for _ in range(world)]
        dist.all_gather(gathered_v, values.to(device))
        dist.all_gather(gathered_i, indices.to(device))
        values, indices = select_topk(torch.cat(gathered_v, 1).cpu(), torch.cat(gathered_i, 1).cpu(), local.k,
                                      local.tie_key)
    return [[(int(i), float(v)) for v, i in zip(row_v.tolist(), row_i.tolist()) if i != _EMPTY]
            for row_v, row_i in zip(values, indices)]
