"""Evaluation MaxSim with bounded memory (no autograd): padded batches in page blocks, and ragged lists.

Design
------
* :func:`maxsim_blocked` flattens the queries to one ``[D, Nq*Lq]`` matrix and processes pages in blocks of ``B``
  pages flattened to ``[B*Ld, D]``, so each block is a single GEMM ``[B*Ld, D] @ [D, Nq*Lq]`` whose output (at
  most ``block_elems`` floats) is reduced with ``amax`` over the page-token axis, vectorised along the contiguous
  query-token axis. Instead of a masking pass over the similarity block, padded page tokens are overwritten with
  a copy of a valid token of the same page (the max is then unchanged, negative scores included) and padded query
  tokens with zeros (they add exactly ``0``).
* :func:`maxsim_lists` takes unpadded ``[L_i, D]`` queries and pages, sorts both by length and pads them in
  groups, so each block is padded only to its own longest item (fewer wasted FLOPs than padding everything, or
  every fixed-size batch, to its longest member).
* :func:`maxsim_scorer` scores many query blocks against the same pages (the miner's brute-force search).

All functions work on any device and agree with :func:`retriever.scoring.exact.maxsim`. On CUDA with Triton
they run the fused kernel of :mod:`retriever.scoring.fused` instead (no similarity block in memory, bf16 by
default, fp32 accumulation); pages given on the CPU are then packed into pinned memory and uploaded
asynchronously. Elsewhere ``compute_dtype`` defaults to the input dtype.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from retriever.model.embeddings import MultiVector, pad_multivector, unpad
from retriever.scoring.exact import check_multivector
from retriever.scoring.fused import fused_maxsim_available

__all__ = ["maxsim_blocked", "maxsim_lists", "maxsim_scorer"]


def _fill_padding(d_emb: Tensor, d_mask: Tensor) -> Tensor:
    """Copy of ``d_emb`` whose padded tokens repeat the page's first valid token (so they never change a max)."""
    first_valid = d_mask.to(torch.uint8).argmax(dim=1)  # [Nd]
    filler = d_emb[torch.arange(d_emb.shape[0], device=d_emb.device), first_valid]  # [Nd, D]
    return torch.where(d_mask.unsqueeze(-1), d_emb, filler.unsqueeze(1))


@torch.no_grad()
def maxsim_blocked(
    q_emb: Tensor,
    q_mask: Tensor,
    d_emb: Tensor,
    d_mask: Tensor,
    block_elems: int = 1 << 24,
    compute_dtype: torch.dtype | None = None,
) -> Tensor:
    """Evaluation MaxSim ``[Nq, Nd]`` (float32, no autograd) over padded tensors, computed in page blocks.

    ``block_elems`` bounds the similarity block ``Nq*Lq x B*Ld`` (16M floats = 64 MiB by default: few large
    GEMMs beat many cache-sized ones, whose per-call thread synchronisation dominates on busy CPUs; query rows
    are split too when one page alone would exceed it). ``compute_dtype`` (e.g. ``torch.bfloat16`` on GPU)
    sets the matmul precision; default keeps the input dtype (bf16 on the fused CUDA path).
    """
    check_multivector(q_emb, q_mask, d_emb, d_mask)
    if fused_maxsim_available(q_emb.device):
        from retriever.scoring.fused.evaluation import maxsim_padded_fused

        return maxsim_padded_fused(q_emb, q_mask, d_emb.to(q_emb.device), d_mask.to(q_emb.device),
                                   compute_dtype or torch.bfloat16)
    dtype = compute_dtype or q_emb.dtype
    nq, lq, dim = q_emb.shape
    nd, ld, _ = d_emb.shape
    out = torch.empty(nq, nd, dtype=torch.float32, device=q_emb.device)
    if nq == 0 or nd == 0:
        return out
    q_cols = q_emb.masked_fill(~q_mask.unsqueeze(-1), 0).to(dtype).reshape(nq * lq, dim).T.contiguous()
    d_full = _fill_padding(d_emb, d_mask).to(dtype)
    q_rows = max(1, min(nq, block_elems // (lq * ld)))
    pages = max(1, min(nd, block_elems // (q_rows * lq * ld)))
    for q0 in range(0, nq, q_rows):
        q_blk = q_cols[:, q0 * lq : (q0 + q_rows) * lq]  # [D, n_q*Lq]
        n_q = q_blk.shape[1] // lq
        for d0 in range(0, nd, pages):
            d_blk = d_full[d0 : d0 + pages]
            n_d = d_blk.shape[0]
            sim = d_blk.reshape(n_d * ld, dim) @ q_blk  # [B*Ld, n_q*Lq]: pages as the GEMM's long side
            best = sim.view(n_d, ld, n_q * lq).amax(dim=1)  # [B, n_q*Lq], reduced along rows (vectorised)
            out[q0 : q0 + n_q, d0 : d0 + n_d] = best.view(n_d, n_q, lq).sum(dim=-1, dtype=torch.float32).T
    return out


def _length_groups(lengths: Sequence[int], max_padded_tokens: int) -> list[list[int]]:
    """Positions sorted by length, cut into groups whose padded size (count x longest) stays within budget."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    for i in order:  # ascending, so a group's longest member is its last
        if groups and (len(groups[-1]) + 1) * lengths[i] <= max_padded_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


@torch.no_grad()
def maxsim_lists(
    queries: Sequence[Tensor] | tuple[Tensor, Tensor],
    pages: Sequence[Tensor],
    block_elems: int = 1 << 24,
    compute_dtype: torch.dtype | None = None,
    group_tokens: int = 1 << 14,
    query_group_tokens: int = 1 << 10,
) -> Tensor:
    """Evaluation MaxSim ``[Nq, Nd]`` for unpadded queries and pages ``[L_i, D]`` (input order kept).

    Queries and pages are each sorted by length and padded in groups (at most ``query_group_tokens`` /
    ``group_tokens`` padded tokens), so items of very different lengths (dynamic-resolution pages, short and
    long queries) do not all pay for the longest one. ``queries`` may also be a padded ``(emb, mask)`` pair.
    Pages may live on another device than the queries (they are moved group by group). On the fused CUDA path
    the grouping arguments do not apply and ``compute_dtype`` defaults to bf16.
    """
    if isinstance(queries, tuple):
        queries = unpad(MultiVector(*queries))
    device = queries[0].device if len(queries) else torch.device("cpu")
    out = torch.empty(len(queries), len(pages), dtype=torch.float32, device=device)
    if not len(queries) or not len(pages):
        return out
    if fused_maxsim_available(device):
        return maxsim_scorer(pages, device, compute_dtype)(queries)
    q_groups = [(torch.tensor(g, device=device), pad_multivector([queries[i] for i in g]))
                for g in _length_groups([q.shape[0] for q in queries], query_group_tokens)]
    for group in _length_groups([p.shape[0] for p in pages], group_tokens):
        d_emb, d_mask = pad_multivector([pages[i] for i in group])
        d_emb, d_mask = d_emb.to(device), d_mask.to(device)
        cols = torch.tensor(group, device=device)
        for rows, (q_emb, q_mask) in q_groups:
            out[rows[:, None], cols] = maxsim_blocked(q_emb, q_mask, d_emb, d_mask, block_elems, compute_dtype)
    return out


def maxsim_scorer(pages: Sequence[Tensor], device: torch.device,
                  compute_dtype: torch.dtype | None = None) -> Callable[[Sequence[Tensor]], Tensor]:
    """Evaluation MaxSim ``queries -> [Nq, Nd]`` against fixed pages ``[L_i, D]``, for many query blocks.

    Where the fused kernel serves ``device``, the pages are packed once (in ``compute_dtype``, default bf16; into
    pinned memory when they are on the CPU) and each call uploads them chunk by chunk to ``device``, to which the
    queries are moved. Elsewhere each call is :func:`maxsim_lists` on the queries' own device.
    """
    if not fused_maxsim_available(device):
        return lambda queries: maxsim_lists(queries, pages, compute_dtype=compute_dtype)
    from retriever.scoring.fused.evaluation import maxsim_packed
    from retriever.scoring.fused.packing import PackedPages

    dtype = compute_dtype or torch.bfloat16
    packed = PackedPages.pack(pages, dtype, pin=pages[0].device.type == "cpu")
    return lambda queries: maxsim_packed(queries, packed, dtype, device)
