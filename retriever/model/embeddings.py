"""The two kinds of embeddings an encoder produces, and the helpers every consumer shares.

* Dense: a tensor ``[N, D]``, one vector per query or page.
* Multi-vector: :class:`MultiVector` ``(emb [N, L, D], mask [N, L])``, one vector per token, padded positions
  exactly zero and ``False`` in the mask. Outside the model (evaluation, mining, caches) a multi-vector batch
  is also held unpadded, as a list of ``[L_i, D]`` tensors; :func:`pad_multivector` and :func:`unpad` convert.

:func:`is_multi_vector` is the one test of which kind a value is; :func:`pad_tokens` and :func:`cat_embeddings`
are the padding and concatenation used by the cross-rank gathers and GradCache.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, TypeAlias

import torch
from torch import Tensor, nn

__all__ = ["Embeddings", "MultiVector", "cat_embeddings", "is_multi_vector", "pad_multivector", "pad_tokens",
           "unpad"]


class MultiVector(NamedTuple):
    """Per-token embeddings ``emb`` [B, L, D] (unit norm, exactly 0 where ``mask`` [B, L] is False)."""

    emb: Tensor
    mask: Tensor


Embeddings: TypeAlias = "Tensor | MultiVector"


def is_multi_vector(value: Any) -> bool:
    """True for a :class:`MultiVector` (padded) or a list of ``[L_i, D]`` tensors (unpadded); False for ``[N, D]``."""
    return isinstance(value, (MultiVector, list))


def pad_tokens(reps: Embeddings, length: int) -> Embeddings:
    """A ``MultiVector`` padded to ``length`` tokens (zero vectors, mask False); dense tensors pass through."""
    if not isinstance(reps, MultiVector):
        return reps
    extra = length - reps.emb.shape[1]
    if extra == 0:
        return reps
    emb = nn.functional.pad(reps.emb, (0, 0, 0, extra))
    mask = nn.functional.pad(reps.mask, (0, extra), value=False)
    return MultiVector(emb, mask)


def cat_embeddings(parts: Sequence[Embeddings]) -> Embeddings:
    """Concatenate dense tensors or MultiVectors along the batch, padding tokens to the longest part."""
    if not isinstance(parts[0], MultiVector):
        return torch.cat(list(parts))
    length = max(p.emb.shape[1] for p in parts)
    padded = [pad_tokens(p, length) for p in parts]
    return MultiVector(torch.cat([p.emb for p in padded]), torch.cat([p.mask for p in padded]))


def pad_multivector(vectors: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack unpadded ``[L_i, D]`` tensors into ``([N, max L, D], bool mask [N, max L])`` (zero padding)."""
    if not vectors:
        raise ValueError("pad_multivector needs at least one tensor")
    lengths = torch.tensor([v.shape[0] for v in vectors])
    emb = torch.nn.utils.rnn.pad_sequence(list(vectors), batch_first=True)
    mask = torch.arange(emb.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    return emb, mask.to(emb.device)


def unpad(reps: MultiVector) -> list[Tensor]:
    """The real tokens of each row of a ``MultiVector``, as a list of ``[L_i, D]`` tensors."""
    return [e[m] for e, m in zip(reps.emb, reps.mask)]
