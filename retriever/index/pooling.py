"""Hierarchical token pooling of a page's vectors (as colpali-engine's ``HierarchicalTokenPooler`` and
sentence-transformers pool them): Ward clustering (SciPy) of the rows of the cosine-distance matrix ``1 - E Eᵀ``
into at most ``max(len // factor, 1)`` clusters; each cluster becomes the mean of its vectors, renormalised to unit
length unless told otherwise. Clusters keep SciPy's label order."""
from __future__ import annotations

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from torch import Tensor

__all__ = ["pool_pages", "pool_tokens"]


def pool_tokens(emb: Tensor, factor: int, renormalize: bool = True) -> Tensor:
    """``emb`` [L, D] pooled to [<= max(L // factor, 1), D] (float64 arithmetic, ``emb``'s dtype and device)."""
    if factor == 1 or emb.shape[0] <= 1:
        return emb
    x = emb.detach().to(torch.float64).cpu().numpy()
    labels = fcluster(linkage(1.0 - x @ x.T, method="ward", metric="euclidean"),
                      t=max(len(x) // factor, 1), criterion="maxclust")
    pooled = torch.from_numpy(np.stack([x[labels == c].mean(0) for c in np.unique(labels)]))
    if renormalize:
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
    return pooled.to(emb.dtype).to(emb.device)


def pool_pages(pages: list[Tensor], factor: int, renormalize: bool = True) -> list[Tensor]:
    """:func:`pool_tokens` of every page (their padding removed beforehand)."""
    return [pool_tokens(page, factor, renormalize) for page in pages]
