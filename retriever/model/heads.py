"""Retrieval heads on top of a language model's last hidden states.

- ``pool``: sequence -> one vector. ``last`` takes the last attended token (works for left and right
  padding because it reads the attention mask, not the sequence end), ``cls`` the first attended token,
  ``mean`` the masked mean and ``weighted_mean`` the position-weighted mean of VisRAG (token i of n real
  tokens weighs i / sum(1..n)), which lets a causal model's later, better-informed tokens count more.
- ``DenseHead``: pooling, optional linear projection, optional L2 normalisation.  Matryoshka training and
  evaluation use ``matryoshka_prefixes`` to take nested prefixes, each re-normalised.
- ``MultiVectorHead``: ColBERT/ColPali style per-token linear projection to ``dim`` (128 by default),
  L2-normalised per token, padded positions exactly zero, returned with the boolean mask as a
  :class:`retriever.model.embeddings.MultiVector`.

Heads hold only their own parameters, so the encoder saves them separately from the backbone weights.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retriever.model.embeddings import MultiVector

Pooling = Literal["last", "mean", "weighted_mean", "cls"]
POOLINGS: tuple[str, ...] = ("last", "mean", "weighted_mean", "cls")


def pool(hidden: Tensor, mask: Tensor, pooling: Pooling) -> Tensor:
    """Pools hidden states [B, L, H] over attended positions (``mask`` [B, L], 1 = token) to [B, H]."""
    mask = mask.bool()
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if pooling == "last":
        last = hidden.shape[1] - 1 - mask.flip(-1).int().argmax(-1)
        return hidden[rows, last]
    if pooling == "cls":
        return hidden[rows, mask.int().argmax(-1)]
    if pooling == "mean":
        weights = mask.to(hidden.dtype)
    elif pooling == "weighted_mean":
        weights = mask.long().cumsum(-1).masked_fill(~mask, 0).to(hidden.dtype)
    else:
        raise ValueError(f"unknown pooling {pooling!r}; supported: {', '.join(POOLINGS)}")
    weights = weights / weights.sum(-1, keepdim=True).clamp(min=1)
    return torch.einsum("blh,bl->bh", hidden, weights)


class DenseHead(nn.Module):
    """Pooling -> optional linear projection -> optional L2 normalisation."""

    def __init__(self, hidden_size: int, pooling: Pooling = "last", projection_dim: int | None = None,
                 normalize: bool = True) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; supported: {', '.join(POOLINGS)}")
        self.pooling = pooling
        self.normalize = normalize
        self.projection = nn.Linear(hidden_size, projection_dim) if projection_dim else None

    @property
    def output_dim(self) -> int | None:
        return self.projection.out_features if self.projection is not None else None

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        emb = pool(hidden, mask, self.pooling)
        if self.projection is not None:
            emb = self.projection(emb)
        return F.normalize(emb, dim=-1) if self.normalize else emb


class MultiVectorHead(nn.Module):
    """Per-token projection to ``dim``; unit norm per token; padded positions exactly zero."""

    def __init__(self, hidden_size: int, dim: int = 128) -> None:
        super().__init__()
        self.projection = nn.Linear(hidden_size, dim)

    def forward(self, hidden: Tensor, mask: Tensor) -> MultiVector:
        mask = mask.bool()
        emb = F.normalize(self.projection(hidden), dim=-1)
        return MultiVector(emb.masked_fill(~mask.unsqueeze(-1), 0.0), mask)


def matryoshka_prefixes(emb: Tensor, dims: Sequence[int]) -> list[Tensor]:
    """The first ``d`` coordinates of ``emb`` [..., D] for each ``d`` in ``dims``, each L2 re-normalised."""
    for d in dims:
        if not 0 < d <= emb.shape[-1]:
            raise ValueError(f"Matryoshka size {d} is not in 1..{emb.shape[-1]} (embedding size)")
    return [F.normalize(emb[..., :d], dim=-1) for d in dims]
