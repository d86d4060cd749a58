"""Evaluation scores with the fused MaxSim (no autograd): unpadded queries against packed or padded pages.

Queries are packed into tiles once; pages are uploaded to the device ``chunk_tokens`` tokens at a time
(asynchronously from pinned memory), each chunk scored by one forward launch, so device memory holds the queries,
the ``[Nq, Nd]`` scores and one chunk of pages, never a similarity block. Scores are returned in float32.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from retriever.scoring.fused.config import BlockConfig, block_config
from retriever.scoring.fused.launch import launch_forward
from retriever.scoring.fused.packing import PackedPages, QueryTiles

__all__ = ["maxsim_packed", "maxsim_padded_fused"]


def maxsim_packed(queries: Sequence[Tensor], pages: PackedPages, compute_dtype: torch.dtype,
                  device: torch.device, chunk_tokens: int = 1 << 22, cfg: BlockConfig | None = None) -> Tensor:
    """Evaluation MaxSim ``[Nq, Nd]`` (float32) of unpadded queries against packed pages, on ``device``.

    Pages are uploaded ``chunk_tokens`` tokens at a time (asynchronously when ``pages`` is pinned), so device
    memory holds one chunk of pages besides the queries and the scores.
    """
    cfg = cfg or block_config(device, compute_dtype)
    out = torch.zeros(len(queries), len(pages), dtype=torch.float32, device=device)
    if not len(queries) or not len(pages):
        return out
    lengths = [int(q.shape[0]) for q in queries]
    flat = torch.cat(list(queries)).to(device, compute_dtype)
    tiles = QueryTiles.build(flat, torch.arange(flat.shape[0], device=device), lengths, cfg.block_q)
    offsets = pages.offsets.cpu()
    first = 0
    while first < len(pages):
        last = int(torch.searchsorted(offsets, offsets[first] + chunk_tokens, right=True)) - 1
        last = min(max(last, first + 1), len(pages))
        span = slice(int(offsets[first]), int(offsets[last]))
        chunk = PackedPages(pages.tokens[span].to(device, non_blocking=True).to(compute_dtype),
                            (offsets[first:last + 1] - offsets[first]).to(device))
        part_scores, _ = launch_forward(tiles, chunk, False, cfg)
        out[:, first:last] = tiles.sum_parts(part_scores, len(queries)).float()
        first = last
    return out


def maxsim_padded_fused(q_emb: Tensor, q_mask: Tensor, d_emb: Tensor, d_mask: Tensor,
                        compute_dtype: torch.dtype) -> Tensor:
    """Evaluation MaxSim ``[Nq, Nd]`` (float32) of padded inputs with boolean masks, on their device."""
    queries = [e[m] for e, m in zip(q_emb, q_mask)]
    return maxsim_packed(queries, PackedPages.from_padded(d_emb, d_mask), compute_dtype, q_emb.device)
