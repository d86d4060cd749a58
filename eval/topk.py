"""Streaming top-k over corpus chunks and its merge across ranks.

The evaluator never holds the ``queries x corpus`` score matrix: each rank scores its corpus shard chunk by
chunk and keeps, per query, only the best ``k`` (score, global corpus index) pairs seen so far
(:class:`RunningTopK`). At the end the per-rank lists are all-gathered and reduced to the global top-k
(:func:`merge_across_ranks`), a ``world_size * Nq * k`` exchange.

Selection is deterministic and independent of chunking and sharding: candidates are ordered by score
descending, ties by a per-document ``tie_key`` ascending (default: the corpus index), so 1 and N ranks keep the
same documents. The evaluators pass the rank of each document id in descending id order, which is trec_eval's
(and MTEB's) tie order, so a tie at the depth cut keeps the same documents trec_eval would rank first.

Two-stage search (index candidates, :mod:`retriever.index`) keeps the best ``depth`` by the first stage's score and
carries each kept document's final score alongside (``payload``); :func:`merge_across_ranks` then ranks the global
first-stage top ``depth`` by their final scores.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from retriever.process_group import RankInfo, collective_device

__all__ = ["RunningTopK", "merge_across_ranks", "select_topk"]
Selected = tuple[Tensor, Tensor, Tensor | None]

_EMPTY = -1  # index of a padding slot (a rank with fewer than k documents)


def select_topk(values: Tensor, indices: Tensor, k: int, tie_key: Tensor | None = None,
                payload: Tensor | None = None) -> Selected:
    """Best ``k`` columns per row of ``values`` ``[Nq, C]`` (ties: smaller ``tie_key[indices]`` first), with the
    same columns of ``payload`` (None without one)."""
    keys = indices if tie_key is None else tie_key[indices.clamp(min=0)]
    keys = torch.where(indices == _EMPTY, torch.iinfo(torch.long).max, keys)
    order = torch.argsort(keys, dim=1, stable=True)
    order = order.gather(1, torch.sort(values.gather(1, order), dim=1, descending=True, stable=True).indices[:, :k])
    return values.gather(1, order), indices.gather(1, order), None if payload is None else payload.gather(1, order)


class RunningTopK:
    """Per-query best ``k`` of a stream of score chunks ``[Nq, C]`` with their global corpus indices."""

    def __init__(self, n_queries: int, k: int, tie_key: Tensor | None = None, with_payload: bool = False) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.tie_key = tie_key
        self.values = torch.full((n_queries, 0), float("-inf"))
        self.indices = torch.full((n_queries, 0), _EMPTY, dtype=torch.long)
        self.payload = torch.full((n_queries, 0), float("-inf")) if with_payload else None

    def update(self, scores: Tensor, doc_indices: Tensor, payload: Tensor | None = None) -> None:
        """Fold in ``scores [Nq, C]`` for corpus positions ``doc_indices`` (``[C]``, or ``[Nq, C]`` per query) and,
        with a payload, the final scores ``payload [Nq, C]`` of the same documents."""
        scores = scores.detach().float().cpu()
        cols = doc_indices.to(torch.long).cpu()
        cols = cols.unsqueeze(0).expand(scores.shape[0], -1) if cols.dim() == 1 else cols
        merged = None if self.payload is None else torch.cat([self.payload, payload.detach().float().cpu()], 1)
        self.values, self.indices, self.payload = select_topk(
            torch.cat([self.values, scores], 1), torch.cat([self.indices, cols], 1), self.k, self.tie_key, merged)

    def padded(self) -> Selected:
        """``(values, indices, payload)`` of shape ``[Nq, k]``; missing slots hold ``-inf`` / ``-1`` / ``-inf``."""
        missing = self.k - self.values.shape[1]
        n = self.values.shape[0]
        fill = torch.full((n, missing), float("-inf"))
        return (torch.cat([self.values, fill], 1),
                torch.cat([self.indices, torch.full((n, missing), _EMPTY, dtype=torch.long)], 1),
                None if self.payload is None else torch.cat([self.payload, fill], 1))


def merge_across_ranks(local: RunningTopK, k: int | None = None) -> list[list[tuple[int, float]]]:
    """Global top-k per query as ``[(corpus index, score), ...]`` (best first), identical on every rank.

    With a payload, the global top ``local.k`` by first-stage score are ranked by their payload (final) scores and
    the best ``k`` returned with those scores. Without an initialised process group this is the local result. Uses
    ``all_gather`` on tensors, on the group's :func:`~retriever.process_group.collective_device`; the group's timeout
    bounds the wait for a dead rank.
    """
    values, indices, payload = local.padded()
    world = RankInfo.current().world
    if world > 1:
        parts = [_all_gather(t) for t in (values, indices, payload) if t is not None]
        values, indices, payload = select_topk(parts[0], parts[1], local.k, local.tie_key,
                                               parts[2] if payload is not None else None)
    if payload is not None:
        payload = torch.where(indices == _EMPTY, float("-inf"), payload)
        payload, indices, _ = select_topk(payload, indices, k or local.k, local.tie_key)
        values = payload
    return [[(int(i), float(v)) for v, i in zip(row_v.tolist(), row_i.tolist()) if i != _EMPTY]
            for row_v, row_i in zip(values, indices)]


def _all_gather(t: Tensor) -> Tensor:
    """Every rank's ``t`` [Nq, k] side by side [Nq, world * k] (on the CPU)."""
    device = collective_device()
    gathered = [torch.empty_like(t, device=device) for _ in range(RankInfo.current().world)]
    dist.all_gather(gathered, t.to(device))
    return torch.cat(gathered, 1).cpu()
