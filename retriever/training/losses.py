"""Contrastive losses for retrieval: InfoNCE over dense or multi-vector (late-interaction) representations.

Design
------
One loss, :class:`ContrastiveLoss`, takes query representations, page representations and a boolean
``positives [B, P]`` mask. Every page that is not a positive of query ``i`` is one of its negatives, so
in-batch negatives, explicit hard negatives and pages gathered from other ranks are all just columns.

* Scores: :func:`retriever.scoring.differentiable_scores`, dot products for dense reps ``[N, D]`` and MaxSim for
  multi-vector reps (``MultiVector(emb, mask)``): chunked, with peak memory one block of ``score_chunk_size``
  queries x ``score_chunk_size`` pages x ``Lq x Ld`` (never ``[B, P, Lq, Ld]``), or fused on CUDA with Triton.
* Multiple positives: each positive ``p`` of query ``i`` is contrasted with the negatives of ``i``:
  ``l_ip = softplus(logsumexp_j∈neg(i) s_ij/T - s_ip/T)`` (= ``-log e^{s_ip/T} / (e^{s_ip/T} + Σ_neg e^{s_ij/T})``),
  averaged over the positives of ``i``; then mean over queries. With one positive this is plain InfoNCE.
* Symmetric (option): the same over columns (page -> query) for every page that is a positive of some query,
  averaged with the query -> page term.
* Query-length normalisation (multi-vector, on by default in ``retriever.train``): each MaxSim score is divided
  by its query's token count before the temperature, as colpali-engine's ``ColbertLoss(normalize_scores=True)``.
  Raw MaxSim sums grow with the query length (a 30-token query reaches 30), so at T = 0.02 the logits reach
  1500 and the softmax is saturated from the first step; normalised scores lie in [-1, 1] like cosines.
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
from retriever.scoring import differentiable_scores

__all__ = ["ContrastiveLoss"]

MAX_LOGIT_SCALE = 100.0


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
        normalize_query_length: bool = False,
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
        self.temperature = temperature
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature))) if learnable_temperature \
            else None
        self.symmetric = symmetric
        self.matryoshka_dims = list(matryoshka_dims) if matryoshka_dims else None
        self.matryoshka_weights = list(matryoshka_weights) if matryoshka_weights else None
        self.false_negative_factor = false_negative_factor
        self.false_negative_mode = false_negative_mode
        self.false_negative_weight = false_negative_weight
        self.score_chunk_size = score_chunk_size
        self.normalize_query_length = normalize_query_length

    def scale(self) -> Tensor:
        """The current logit scale ``1 / T`` (clamped to 100 when learnable; a fixed one is exact in float64)."""
        if self.logit_scale is None:
            return torch.tensor(1.0 / self.temperature, dtype=torch.float64)
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
        raw = differentiable_scores(q_reps, p_reps, self.score_chunk_size)
        if self.normalize_query_length and is_multi_vector(q_reps):
            raw = raw / q_reps.mask.sum(dim=1, keepdim=True).to(raw.dtype)
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
