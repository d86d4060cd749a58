"""Scoring pages through a compressed index (:class:`IndexSettings`): what the evaluator's engine calls per chunk.

:meth:`IndexScorer.pages` pools a chunk's page vectors; :meth:`IndexScorer.stored` scores pages by their stored
representation (float, int8 or binary MaxSim); :meth:`IndexScorer.first_stage` by the candidate representation
(MUVERA encodings, binary or int8 MaxSim). :func:`page_bytes` says what each representation of a page
takes: float vectors are counted as float16 (2 bytes per value, how an index stores them), int8 as D bytes plus a
float32 scale per vector, binary as D/8 bytes per vector, a MUVERA encoding as float16.
"""
from __future__ import annotations

import torch
from torch import Tensor

from retriever.model.embeddings import pad_multivector
from retriever.scoring import maxsim_lists

from . import muvera
from .pooling import pool_pages
from .quantization import binary_maxsim, to_binary, to_int8
from .settings import IndexSettings, MuveraSettings

__all__ = ["IndexScorer", "page_bytes"]

FLOAT_BYTES = 2  # float vectors as an index stores them (float16)


class IndexScorer:
    """Scores chunks of pages against fixed ``queries`` (a list of [Lq, D] float tensors) under ``settings``."""

    def __init__(self, settings: IndexSettings, queries: list[Tensor], device: torch.device | str = "cpu",
                 compute_dtype: torch.dtype | None = None) -> None:
        self.settings = settings
        self.device = torch.device(device)
        self.compute_dtype = compute_dtype
        self._queries = {kind: self._prepare_queries(kind, queries) for kind in
                         {settings.quantize, settings.candidates} - {"exact"}}

    def _prepare_queries(self, kind: str, queries: list[Tensor]):
        if kind == "binary":
            return [to_binary(q) for q in queries]
        if kind == "muvera":
            return muvera.encode_queries(queries, self.settings.muvera).to(self.device)
        if kind == "int8":
            queries = [to_int8(q).dequantized() for q in queries]
        return tuple(t.to(self.device) for t in pad_multivector(queries)) if queries else None

    @property
    def two_stage(self) -> bool:
        return self.settings.candidates != "exact"

    def pages(self, pages: list[Tensor]) -> list[Tensor]:
        """The chunk's page vectors after pooling (unchanged with ``pool_factor`` 1)."""
        if self.settings.pool_factor == 1:
            return pages
        return pool_pages(pages, self.settings.pool_factor, self.settings.pool_renormalize)

    def stored(self, pages: list[Tensor]) -> Tensor:
        """[Nq, C] scores of ``pages`` by their stored representation."""
        return self._score(self.settings.quantize, pages)

    def first_stage(self, pages: list[Tensor]) -> Tensor:
        """[Nq, C] scores of ``pages`` by the candidate representation."""
        return self._score(self.settings.candidates, pages)

    def _score(self, kind: str, pages: list[Tensor]) -> Tensor:
        queries = self._queries.get(kind)
        if kind == "binary":
            return binary_maxsim(queries, [to_binary(p) for p in pages])
        if kind == "muvera":
            return (queries @ muvera.encode_pages(pages, self.settings.muvera).to(self.device).T).float().cpu()
        if kind == "int8":
            pages = [to_int8(p).dequantized() for p in pages]
        return maxsim_lists(queries, pages, compute_dtype=self.compute_dtype).float().cpu()


def page_bytes(page: Tensor, kind: str, muvera_settings: MuveraSettings = MuveraSettings()) -> int:
    """Bytes of one (pooled) page [L, D] in representation ``kind`` (``none`` / ``exact``: float16 vectors)."""
    rows, dim = page.shape
    if kind == "int8":
        return rows * (dim + 4)
    if kind == "binary":
        return rows * -(-dim // 8)
    if kind == "muvera":
        return muvera.fde_dim(dim, muvera_settings) * FLOAT_BYTES
    return rows * dim * FLOAT_BYTES
