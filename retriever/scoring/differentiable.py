"""Differentiable scores for training: the contrastive loss's ``[B, P]`` score matrix with bounded memory.

:func:`differentiable_scores` is the one score function of :class:`retriever.training.losses.ContrastiveLoss`:
dense reps ``[N, D]`` use dot products; multi-vector reps (``MultiVector(emb, mask)``) use MaxSim, evaluated

* on CUDA with Triton by :class:`retriever.scoring.fused.autograd.FusedMaxSim` (float32, in registers,
  backpropagating through the saved argmax indices: no similarity block in either pass);
* elsewhere by :class:`ChunkedMaxSim`, an autograd function that computes the score matrix block by block with
  :func:`retriever.scoring.exact.maxsim` and recomputes each block in backward. Peak memory is one block
  (``chunk`` queries x ``chunk`` pages x ``Lq x Ld``), never ``[B, P, Lq, Ld]``.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from retriever.model.embeddings import is_multi_vector
from retriever.scoring.exact import dense_scores, maxsim
from retriever.scoring.fused import fused_maxsim_available

__all__ = ["ChunkedMaxSim", "chunked_maxsim", "differentiable_scores"]


class ChunkedMaxSim(torch.autograd.Function):
    """MaxSim scores ``[Nq, Nd]`` computed in ``chunk x chunk`` blocks; backward recomputes block by block.

    Autograd would otherwise keep every block's ``[c, c, Lq, Ld]`` similarity tensor alive until backward;
    here only the inputs are saved, so memory stays at one block in both passes.
    """

    @staticmethod
    def forward(ctx, q_emb: Tensor, q_mask: Tensor, d_emb: Tensor, d_mask: Tensor, chunk: int) -> Tensor:
        ctx.save_for_backward(q_emb, q_mask, d_emb, d_mask)
        ctx.chunk = chunk
        out = q_emb.new_empty(q_emb.shape[0], d_emb.shape[0])
        for qs, ds in _blocks(q_emb.shape[0], d_emb.shape[0], chunk):
            out[qs, ds] = maxsim(q_emb[qs], q_mask[qs], d_emb[ds], d_mask[ds])
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q_emb, q_mask, d_emb, d_mask = ctx.saved_tensors
        grad_q = torch.zeros_like(q_emb) if ctx.needs_input_grad[0] else None
        grad_d = torch.zeros_like(d_emb) if ctx.needs_input_grad[2] else None
        for qs, ds in _blocks(q_emb.shape[0], d_emb.shape[0], ctx.chunk):
            with torch.enable_grad():
                q_blk = q_emb[qs].detach().requires_grad_(grad_q is not None)
                d_blk = d_emb[ds].detach().requires_grad_(grad_d is not None)
                block = maxsim(q_blk, q_mask[qs], d_blk, d_mask[ds])
                wanted = [t for t in (q_blk, d_blk) if t.requires_grad]
                grads = iter(torch.autograd.grad(block, wanted, grad_out[qs, ds]))
            if grad_q is not None:
                grad_q[qs] += next(grads)
            if grad_d is not None:
                grad_d[ds] += next(grads)
        return grad_q, None, grad_d, None, None


def _blocks(n_rows: int, n_cols: int, chunk: int) -> Iterator[tuple[slice, slice]]:
    """Yield ``(row_slice, col_slice)`` pairs tiling an ``n_rows x n_cols`` matrix in ``chunk``-sized blocks."""
    for r in range(0, n_rows, chunk):
        for c in range(0, n_cols, chunk):
            yield slice(r, r + chunk), slice(c, c + chunk)


def chunked_maxsim(q_emb: Tensor, q_mask: Tensor, d_emb: Tensor, d_mask: Tensor, chunk: int = 64) -> Tensor:
    """Differentiable MaxSim ``[Nq, Nd]`` with memory bounded by one ``chunk x chunk`` block."""
    if chunk < 1:
        raise ValueError(f"score chunk size must be >= 1, got {chunk}")
    return ChunkedMaxSim.apply(q_emb, q_mask, d_emb, d_mask, chunk)


def differentiable_scores(q_reps: Any, p_reps: Any, chunk: int = 64) -> Tensor:
    """Score matrix ``[B, P]``: dot products for dense reps, chunked (or fused, on CUDA) MaxSim for multi-vector."""
    if is_multi_vector(q_reps) != is_multi_vector(p_reps):
        raise TypeError("queries and pages must both be dense tensors or both MultiVector")
    if not is_multi_vector(q_reps):
        return dense_scores(q_reps, p_reps)
    if fused_maxsim_available(q_reps.emb.device):
        from retriever.scoring.fused.autograd import fused_maxsim

        return fused_maxsim(q_reps.emb, q_reps.mask, p_reps.emb, p_reps.mask)
    return chunked_maxsim(q_reps.emb, q_reps.mask, p_reps.emb, p_reps.mask, chunk)
