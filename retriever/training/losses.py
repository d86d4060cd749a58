"""Contrastive losses for retrieval: InfoNCE over dense or multi-vector (late-interaction) representations.

Design
------
One loss, :class:`ContrastiveLoss`, takes query representations, page representations and a boolean
``positives [B, P]`` mask. Every page that is not a positive of query ``i`` is one of its negatives, so
in-batch negatives, explicit hard negatives and pages gathered from other ranks are all just columns.

* Scores: dense reps ``[N, D]`` use dot products; multi-vector reps (``MultiVector(emb, mask)``) use MaxSim
  from :mod:`retriever.model.scoring`, evaluated by :class:`ChunkedMaxSim`, an autograd function that computes the
  ``[B, P]`` score matrix block by block and recomputes each block in backward. Peak memory is one block
  (``score_chunk_size`` queries x ``score_chunk_size`` pages x ``Lq x Ld``), never ``[B, P, Lq, Ld]``.
  On CUDA with Triton, :class:`retriever.model.maxsim_triton.FusedMaxSim` computes the same scores (float32) in
  registers and backpropagates through the saved argmax indices instead.
* Multiple positives: each positive ``p`` of query ``i`` is contrasted with the negatives of ``i``:
  ``l_ip = softplus(logsumexp_j∈neg(i) s_ij/T - s_ip/T)`` (= ``-log e^{s_ip/T} / (e^{s_ip/T} + Σ_neg e^{s_ij/T})``),
  averaged over the positives of ``i``; then mean over queries. With one positive this is plain InfoNCE.
* Symmetric (option): the same over columns (page -> query) for every page that is a positive of some query,
  averaged with the query -> page term.
* Temperature: fixed, or learnable as a log logit scale (CLIP/InternVL style, scale clamped to 100). The
  parameter is ``ContrastiveLoss.logit_scale``; the optimizer must include ``loss.parameters()``.
* Matryoshka: the loss is the weighted sum over nested prefix sizes (prefixes are re-normalised; padded
  multi-vector tokens stay zero).
* False-negative guard (option): a negative whose score exceeds ``factor`` x the query's best positive score is
  dropped (``"drop"``) or its exp-term multiplied by ``false_negative_weight`` (``"downweight"``). The decision
  is taken on detached scores, so it routes gradient but does not receive any.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retriever.model.embeddings import MultiVector, is_multi_vector
from retriever.model.heads import matryoshka_prefixes
from retriever.model.scoring import fused_maxsim_available, maxsim

__all__ = ["ChunkedMaxSim", "ContrastiveLoss", "chunked_maxsim", "scores"]

MAX_LOGIT_SCALE = 100.0


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


def _blocks(n_rows: int, n_cols: int, chunk: int):
    """Yield ``(row_slice, col_slice)`` pairs tiling an ``n_rows x n_cols`` matrix in ``chunk``-sized blocks."""
    for r in range(0, n_rows, chunk):
        for c in range(0, n_cols, chunk):
            yield slice(r, r + chunk), slice(c, c + chunk)


def chunked_maxsim(q_emb: Tensor, q_mask: Tensor, d_emb: Tensor, d_mask: Tensor, chunk: int = 64) -> Tensor:
    """Differentiable MaxSim ``[Nq, Nd]`` with memory bounded by one ``chunk x chunk`` block."""
    if chunk < 1:
        raise ValueError(f"score chunk size must be >= 1, got {chunk}")
    return ChunkedMaxSim.apply(q_emb, q_mask, d_emb, d_mask, chunk)


def scores(q_reps: Any, p_reps: Any, chunk: int = 64) -> Tensor:
    """Score matrix ``[B, P]``: dot products for dense reps, chunked (or fused, on CUDA) MaxSim for multi-vector."""
    if is_multi_vector(q_reps) != is_multi_vector(p_reps):
        raise TypeError("queries and pages must both be dense tensors or both MultiVector")
    if is_multi_vector(q_reps) and fused_maxsim_available(q_reps.emb.device):
        from retriever.model.maxsim_triton import fused_maxsim

        return fused_maxsim(q_reps.emb, q_reps.mask, p_reps.emb, p_reps.mask)
    if is_multi_vector(q_reps):
        return chunked_maxsim(q_reps.emb, q_reps.mask, p_reps.emb, p_reps.mask, chunk)
    return q_reps @ p_reps.T


def _prefix(reps: Any, dim: int) -> Any:
    """Re-normalised Matryoshka prefix of size ``dim`` (dense or multi-vector; zero padding stays zero)."""
    if is_multi_vector(reps):
        return MultiVector(matryoshka_prefixes(reps.emb, [dim])[0], reps.mask)
    return matryoshka_prefixes(reps, [dim])[0]


def _info_nce(logits: Tensor, positives: Tensor, flagged: Tensor | None = None, flagged_offset: float = 0.0
              ) -> Tensor:
    """Mean over rows of the per-row average, over positives, of ``softplus(lse(negatives) - positive)``.

    ``flagged`` negatives get ``flagged_offset`` added to their logit (``-inf`` drops them). Memory: besides
    ``logits``, one ``[B, P]`` tensor (the masked negatives) is kept for backward; the positive terms are
    gathered as a list, so large batches do not pay for several score-sized intermediates.
    """
    excluded = positives if flagged is None or flagged_offset != float("-inf") else positives | flagged
    neg_logits = logits.masked_fill(excluded, float("-inf"))
    if flagged is not None and flagged_offset != float("-inf"):
        neg_logits = neg_logits + flagged.to(logits.dtype) * flagged_offset
    # A row without negatives (e.g. all dropped as suspected false negatives) has loss 0; its gradient must
    # stay finite, so its logsumexp runs over zeros and is then replaced by -inf.
    has_neg = ~excluded.all(dim=1)
    if not bool(has_neg.all()):
        neg_logits = neg_logits.masked_fill(~has_neg[:, None], 0.0)
    neg_lse = torch.logsumexp(neg_logits, dim=1)
    neg_lse = torch.where(has_neg, neg_lse, torch.full_like(neg_lse, float("-inf")))
    rows, cols = positives.nonzero(as_tuple=True)
    per_pair = F.softplus(neg_lse[rows] - logits[rows, cols])
    per_row = torch.zeros_like(neg_lse).index_add(0, rows, per_pair)
    return (per_row / positives.sum(dim=1)).mean()


class ContrastiveLoss(nn.Module):
    """InfoNCE with in-batch and hard negatives, multiple positives, Matryoshka and a false-negative guard.

    ``forward(q_reps, p_reps, positives)``: ``q_reps`` ``[B, D]`` or ``MultiVector``; ``p_reps`` ``[P, D]`` or
    ``MultiVector``; ``positives [B, P]`` bool with at least one True per row. Returns the scalar mean loss.
    """

    def __init__(
        self,
        temperature: float = 0.02,
        learnable_temperature: bool = False,
        symmetric: bool = False,
        matryoshka_dims: Sequence[int] | None = None,
        matryoshka_weights: Sequence[float] | None = None,
        false_negative_factor: float | None = None,
        false_negative_mode: Literal["drop", "downweight"] = "drop",
        score_chunk_size: int = 64,
        false_negative_weight: float = 0.1,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if false_negative_mode not in ("drop", "downweight"):
            raise ValueError(f"false_negative_mode must be 'drop' or 'downweight', got {false_negative_mode!r}")
        if matryoshka_weights is not None and len(matryoshka_weights) != len(matryoshka_dims or ()):
            raise ValueError("matryoshka_weights needs matryoshka_dims of the same length")
        if not 0 < false_negative_weight <= 1:
            raise ValueError(f"false_negative_weight must be in (0, 1], got {false_negative_weight}")
        log_scale = torch.tensor(math.log(1.0 / temperature), dtype=torch.float32)
        if learnable_temperature:
            self.logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("logit_scale", log_scale, persistent=False)
        self.symmetric = symmetric
        self.matryoshka_dims = list(matryoshka_dims) if matryoshka_dims else None
        self.matryoshka_weights = list(matryoshka_weights) if matryoshka_weights else None
        self.false_negative_factor = false_negative_factor
        self.false_negative_mode = false_negative_mode
        self.false_negative_weight = false_negative_weight
        self.score_chunk_size = score_chunk_size

    def scale(self) -> Tensor:
        """The current logit scale ``1 / T`` (clamped to 100 when learnable)."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, q_reps: Any, p_reps: Any, positives: Tensor) -> Tensor:
        positives = self._check(q_reps, p_reps, positives)
        if not self.matryoshka_dims:
            return self._single(q_reps, p_reps, positives)
        weights = self.matryoshka_weights or [1.0] * len(self.matryoshka_dims)
        return sum(
            w * self._single(_prefix(q_reps, d), _prefix(p_reps, d), positives)
            for d, w in zip(self.matryoshka_dims, weights)
        )

    def _single(self, q_reps: Any, p_reps: Any, positives: Tensor) -> Tensor:
        """Loss at one representation size."""
        raw = scores(q_reps, p_reps, self.score_chunk_size)
        logits = raw * self.scale().to(raw.dtype)
        flagged = self._suspected_false_negatives(raw.detach(), positives)
        offset = float("-inf") if self.false_negative_mode == "drop" else math.log(self.false_negative_weight)
        loss = _info_nce(logits, positives, flagged, offset)
        if self.symmetric:
            has_query = positives.any(dim=0)
            loss = 0.5 * (loss + _info_nce(logits.T[has_query], positives.T[has_query]))
        return loss

    def _suspected_false_negatives(self, raw: Tensor, positives: Tensor) -> Tensor | None:
        """Negatives scoring above ``factor`` x the query's best positive score (None when the guard is off)."""
        if self.false_negative_factor is None:
            return None
        best_pos = raw.masked_fill(~positives, float("-inf")).amax(dim=1, keepdim=True)
        return (raw > self.false_negative_factor * best_pos) & ~positives

    @staticmethod
    def _check(q_reps: Any, p_reps: Any, positives: Tensor) -> Tensor:
        """Validate the mask against the reps; return it as bool."""
        n_q = (q_reps.emb if is_multi_vector(q_reps) else q_reps).shape[0]
        n_p = (p_reps.emb if is_multi_vector(p_reps) else p_reps).shape[0]
        if positives.shape != (n_q, n_p):
            raise ValueError(f"positives mask has shape {tuple(positives.shape)}, expected ({n_q}, {n_p})")
        positives = positives.to(torch.bool)
        missing = (~positives.any(dim=1)).nonzero().flatten()
        if missing.numel():
            raise ValueError(f"queries {missing.tolist()[:10]} have no positive page in the batch")
        return positives
