"""MUVERA fixed dimensional encodings (Jayaram et al., 2024) through FastEmbed's ``Muvera``: SimHash partitions of
the vectors, per partition the page's mean (empty partitions filled from the nearest one) or the query's sum,
random ±1 projections, repeated; the dot product of a query's and a page's encodings approximates their MaxSim, so
one dense scan ranks every page and only the best are rescored exactly.

FastEmbed is imported lazily (its package also loads ONNX Runtime) and installed without its dependency pins
(``shell/venv.sh``), which would downgrade huggingface-hub below what transformers needs.
"""
from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .settings import MuveraSettings

__all__ = ["encode_pages", "encode_queries", "fde_dim"]


@cache
def _muvera(dim: int, settings: MuveraSettings) -> Any:
    from fastembed.postprocess import Muvera

    return Muvera(dim=dim, k_sim=settings.k_sim, dim_proj=min(settings.dim_proj, dim), r_reps=settings.r_reps,
                  random_seed=settings.seed)


def fde_dim(dim: int, settings: MuveraSettings) -> int:
    """Dimensions of the encoding of ``dim``-dimensional vectors."""
    return int(_muvera(dim, settings).embedding_size)


def encode_pages(pages: list[Tensor], settings: MuveraSettings) -> Tensor:
    """[Np, F] float32 page encodings."""
    if not pages:
        return torch.zeros(0, 0)
    muvera = _muvera(pages[0].shape[-1], settings)
    return torch.from_numpy(np.stack([muvera.process_document(_numpy(p)) for p in pages]).astype(np.float32))


def encode_queries(queries: list[Tensor], settings: MuveraSettings) -> Tensor:
    """[Nq, F] float32 query encodings."""
    muvera = _muvera(queries[0].shape[-1], settings)
    return torch.from_numpy(np.stack([muvera.process_query(_numpy(q)) for q in queries]).astype(np.float32))


def _numpy(x: Tensor) -> np.ndarray:
    return x.detach().to(torch.float64).cpu().numpy()
