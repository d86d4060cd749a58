"""Exact scores for a query's candidate pages, and their ranking.

Searching (:mod:`retriever.mining.search`) finds candidate page indices (FAISS over dense or pooled vectors, or
brute-force MaxSim); this module scores the candidates exactly (dot product, or MaxSim over the page's tokens
with :func:`retriever.scoring.maxsim_lists`) and ranks them, so the scores that the selection rules compare and
that the mined file records are the model's own scores, whatever index found them.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from retriever.mining.selection import Candidate
from retriever.scoring import maxsim_lists

PageEmbeddings = Tensor | Sequence[Tensor]


def exact_scores(query: Tensor, pages: PageEmbeddings, indices: Sequence[int], multi: bool) -> Tensor:
    """Scores ``[len(indices)]`` of one query against the pages at ``indices`` (dot product or MaxSim)."""
    if not len(indices):
        return torch.empty(0)
    if multi:
        return maxsim_lists([query], [pages[i] for i in indices])[0]
    return pages[torch.as_tensor(list(indices))].float() @ query.float()


def rank_candidates(query: Tensor, pages: PageEmbeddings, indices: Sequence[int], ids: Sequence[str],
                    multi: bool) -> list[Candidate]:
    """The candidates at ``indices`` scored exactly and sorted best first (ties: lower page index first)."""
    unique = list(dict.fromkeys(int(i) for i in indices if int(i) >= 0))
    scores = exact_scores(query, pages, unique, multi).tolist()
    order = sorted(range(len(unique)), key=lambda j: (-scores[j], unique[j]))
    return [Candidate(ids[unique[j]], scores[j], rank + 1) for rank, j in enumerate(order)]
