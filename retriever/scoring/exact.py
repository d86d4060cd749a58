"""The definitions: dense dot-product scores and differentiable ColBERT-style MaxSim on padded tensors.

MaxSim: for every valid query token, take the maximum dot product over the page's valid tokens, and sum those
maxima over the query's valid tokens. :func:`maxsim` computes it with plain torch ops on padded tensors with
boolean masks, materialising the ``[Nq, Nd, Lq, Ld]`` similarity block, so callers bound ``Nq * Nd`` themselves
(:mod:`retriever.scoring.differentiable` chunks it). Padded page tokens are filled with ``-inf`` before the max, so
they can never win even when every real score is negative; padded query tokens contribute exactly zero. Every
other MaxSim path (blocked, fused, chunked) is checked against this one.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_multivector", "check_pages_have_tokens", "dense_scores", "maxsim"]


def dense_scores(q_emb: Tensor, d_emb: Tensor) -> Tensor:
    """Dot-product scores ``[Nq, Nd]`` between single-vector queries ``[Nq, D]`` and pages ``[Nd, D]``."""
    if q_emb.ndim != 2 or d_emb.ndim != 2 or q_emb.shape[1] != d_emb.shape[1]:
        raise ValueError(f"dense_scores expects [Nq, D] and [Nd, D], got {tuple(q_emb.shape)} and {tuple(d_emb.shape)}")
    return q_emb @ d_emb.T


def check_pages_have_tokens(d_emb: Tensor, d_mask: Tensor) -> None:
    """Every page needs at least one valid token (its MaxSim would otherwise be undefined)."""
    if d_emb.shape[0] and not bool(d_mask.any(dim=1).all()):
        raise ValueError("every page needs at least one valid token (a d_mask row is all False)")


def check_multivector(q_emb: Tensor, q_mask: Tensor, d_emb: Tensor, d_mask: Tensor) -> None:
    """Validate the shapes and masks every padded MaxSim path takes."""
    if q_emb.ndim != 3 or d_emb.ndim != 3 or q_emb.shape[-1] != d_emb.shape[-1]:
        raise ValueError(f"maxsim expects [Nq, Lq, D] and [Nd, Ld, D], got {tuple(q_emb.shape)} and {tuple(d_emb.shape)}")
    if q_mask.shape != q_emb.shape[:2] or d_mask.shape != d_emb.shape[:2]:
        raise ValueError(
            f"mask shapes {tuple(q_mask.shape)}, {tuple(d_mask.shape)} do not match embeddings "
            f"{tuple(q_emb.shape[:2])}, {tuple(d_emb.shape[:2])}"
        )
    if q_mask.dtype != torch.bool or d_mask.dtype != torch.bool:
        raise TypeError("maxsim masks must be torch.bool")
    check_pages_have_tokens(d_emb, d_mask)


def maxsim(q_emb: Tensor, q_mask: Tensor, d_emb: Tensor, d_mask: Tensor) -> Tensor:
    """Differentiable late-interaction scores ``[Nq, Nd]``.

    ``q_emb [Nq, Lq, D]``, ``q_mask [Nq, Lq]`` (bool, True = real token), ``d_emb [Nd, Ld, D]``,
    ``d_mask [Nd, Ld]``. Memory is ``O(Nq * Nd * Lq * Ld)``; chunk the inputs to bound it.
    """
    check_multivector(q_emb, q_mask, d_emb, d_mask)
    nq, lq, dim = q_emb.shape
    nd, ld, _ = d_emb.shape
    sim = (q_emb.reshape(nq * lq, dim) @ d_emb.reshape(nd * ld, dim).T).view(nq, lq, nd, ld)
    sim = sim.masked_fill(~d_mask.view(1, 1, nd, ld), float("-inf"))
    best = sim.amax(dim=-1)  # [Nq, Lq, Nd]
    best = torch.where(q_mask.unsqueeze(-1), best, torch.zeros((), dtype=best.dtype, device=best.device))
    return best.sum(dim=1)
