"""Relevance scores between query and page embeddings: dense dot products and ColBERT-style MaxSim.

Design
------
Two MaxSim paths share one definition: for every valid query token, take the maximum dot product over the
page's valid tokens, and sum those maxima over the query's valid tokens.

* :func:`maxsim` is the training path: plain differentiable torch ops on padded tensors with boolean masks.
  It materialises the ``[Nq, Nd, Lq, Ld]`` similarity block, so callers bound ``Nq * Nd`` themselves
  (the contrastive loss chunks it). Padded page tokens are filled with ``-inf`` before the max, so they can
  never win even when every real score is negative; padded query tokens contribute exactly zero.

* :func:`maxsim_blocked` / :func:`maxsim_lists` are the evaluation path (no autograd). Queries are flattened to
  one ``[D, Nq*Lq]`` matrix and pages are processed in blocks of ``B`` pages flattened to ``[B*Ld, D]``, so each
  block is a single GEMM ``[B*Ld, D] @ [D, Nq*Lq]`` whose output (at most ``block_elems`` floats) is reduced
  with ``amax`` over the page-token axis, vectorised along the contiguous query-token axis.
  Instead of a masking pass over the similarity block, padded page tokens are overwritten with a copy of a
  valid token of the same page (the max is then unchanged, negative scores included) and padded query tokens
  with zeros (they add exactly ``0``). :func:`maxsim_lists` also sorts queries and pages by length and pads
  them in groups, so each block is padded only to its own longest item (fewer wasted FLOPs than padding
  everything, or every fixed-size batch, to its longest member).

* :func:`dense_scores` is the single-vector head's score, ``q @ d.T``.

All functions work on any device. On CUDA with Triton installed, :func:`maxsim_blocked` / :func:`maxsim_lists`
run the fused kernel of :mod:`retriever.model.maxsim_triton` instead (no similarity block in memory, bf16 by default,
fp32 accumulation); pages given on the CPU are then packed into pinned memory and uploaded asynchronously.
Elsewhere ``compute_dtype`` defaults to the input dtype.
"""
from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Sequence

import torch
from torch import Tensor

from retriever.model.dtype import DTYPES
from retriever.model.embeddings import MultiVector, pad_multivector, unpad

__all__ = ["add_score_dtype_argument", "dense_scores", "fused_maxsim_available", "maxsim", "maxsim_blocked",
           "maxsim_lists", "score_dtype"]

SCORE_DTYPES = ("bfloat16", "float32")  # names of retriever.model.dtype.DTYPES the fused kernel scores in


def fused_maxsim_available(device: torch.device) -> bool:
    """True where the fused Triton MaxSim serves the call: a CUDA device and an importable Triton."""
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None


def add_score_dtype_argument(parser: argparse.ArgumentParser) -> None:
    """``--score_dtype``: the precision of MaxSim scoring on a GPU (evaluation CLIs)."""
    parser.add_argument("--score_dtype", choices=SCORE_DTYPES, default="bfloat16",
                        help="MaxSim precision on CUDA: bfloat16 (default, the fused kernel's fastest path; scores "
                             "within about 1e-2) or float32 (fp32-level scores, whose rankings match float32 "
                             "references such as MTEB's up to fp32 rounding). On CPU, scores keep the embeddings' "
                             "dtype.")


def score_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The ``compute_dtype`` of the MaxSim functions for ``--score_dtype name`` on ``device`` (None off CUDA)."""
    return DTYPES[name] if device.type == "cuda" else None


def dense_scores(q_emb: Tensor, d_emb: Tensor) -> Tensor:
    """Dot-product scores ``[Nq, Nd]`` between single-vector queries ``[Nq, D]`` and pages ``[Nd, D]``."""
    if q_emb.ndim != 2 or d_emb.ndim != 2 or q_emb.shape[1] != d_emb.shape[1]:
        raise ValueError(f"dense_scores expects [Nq, D] and [Nd, D], got {tuple(q_emb.shape)} and {tuple(d_emb.shape)}")
    return q_emb @ d_emb.T


def _check_multivector(q_emb: Tensor, q_mask: Tensor, d_emb: Tensor, d_mask: Tensor) -> None:
    """Validate shapes and masks shared by both MaxSim paths."""
    if q_emb.ndim != 3 or d_emb.ndim != 3 or q_emb.shape[-1] != d_emb.shape[-1]:
        raise ValueError(f"maxsim expects [Nq, Lq, D] and [Nd, Ld, D], got {tuple(q_emb.shape)} and {tuple(d_emb.shape)}")
    if q_mask.shape != q_emb.shape[:2] or d_mask.shape != d_emb.shape[:2]:
        raise ValueError(
            f"mask shapes {tuple(q_mask.shape)}, {tuple(d_mask.shape)} do not match embeddings "
            f"{tuple(q_emb.shape[:2])}, {tuple(d_emb.shape[:2])}"
        )
    if q_mask.dtype != torch.bool or d_mask.dtype != torch.bool:
        raise TypeError("maxsim masks must be torch.bool")
    if d_emb.shape[0] and not bool(d_mask.any(dim=1).all()):
        raise ValueError("every page needs at least one valid token (a d_mask row is all False)")


def maxsim(q_emb: Tensor, q_mask: Tensor, d_emb: Tensor, d_mask: Tensor) -> Tensor:
    """Differentiable late-interaction scores ``[Nq, Nd]``.

    ``q_emb [Nq, Lq, D]``, ``q_mask [Nq, Lq]`` (bool, True = real token), ``d_emb [Nd, Ld, D]``,
    ``d_mask [Nd, Ld]``. Memory is ``O(Nq * Nd * Lq * Ld)``; chunk the inputs to bound it.
    """
    _check_multivector(q_emb, q_mask, d_emb, d_mask)
    nq, lq, dim = q_emb.shape
    nd, ld, _ = d_emb.shape
    sim = (q_emb.reshape(nq * lq, dim) @ d_emb.reshape(nd * ld, dim).T).view(nq, lq, nd, ld)
    sim = sim.masked_fill(~d_mask.view(1, 1, nd, ld), float("-inf"))
    best = sim.amax(dim=-1)  # [Nq, Lq, Nd]
    best = torch.where(q_mask.unsqueeze(-1), best, torch.zeros((), dtype=best.dtype, device=best.device))
    return best.sum(dim=1)


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
    _check_multivector(q_emb, q_mask, d_emb, d_mask)
    if fused_maxsim_available(q_emb.device):
        from retriever.model.maxsim_triton import maxsim_padded_fused

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
        from retriever.model.maxsim_triton import PackedPages, maxsim_packed

        dtype = compute_dtype or torch.bfloat16
        packed = PackedPages.pack(pages, dtype, pin=pages[0].device.type == "cpu")
        return maxsim_packed(queries, packed, dtype, device)
    q_groups = [(torch.tensor(g, device=device), pad_multivector([queries[i] for i in g]))
                for g in _length_groups([q.shape[0] for q in queries], query_group_tokens)]
    for group in _length_groups([p.shape[0] for p in pages], group_tokens):
        d_emb, d_mask = pad_multivector([pages[i] for i in group])
        d_emb, d_mask = d_emb.to(device), d_mask.to(device)
        cols = torch.tensor(group, device=device)
        for rows, (q_emb, q_mask) in q_groups:
            out[rows[:, None], cols] = maxsim_blocked(q_emb, q_mask, d_emb, d_mask, block_elems, compute_dtype)
    return out
