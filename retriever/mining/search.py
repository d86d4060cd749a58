"""Candidate search: which pages a query's negatives are drawn from, found cheaply and scored exactly later.

* Dense heads: FAISS inner-product search (:func:`search_dense`), exact ``Flat`` by default or any index factory
  string (``IVF4096,Flat`` for large corpora), on the GPUs when faiss has any.
* Multi-vector heads, ``pooled`` (default): each item's *pooled* vector is the mean of its token vectors,
  L2-normalised (:func:`pooled_vectors`); its inner product with a query's pooled vector is a cheap proxy for
  MaxSim, so FAISS over pooled vectors takes the best ``pool_depth`` pages, which
  :func:`retriever.mining.candidates.rank_candidates` then reranks with exact MaxSim, instead of scoring every
  page token by token.
* Multi-vector heads, ``exact``: brute-force MaxSim over every page (:func:`search_multi`), query block by query
  block, with :func:`retriever.scoring.maxsim_scorer` (on a GPU with Triton the pages are packed once into pinned
  bf16 memory and the fused kernel scores 16x larger query blocks).

The indices found here are unranked: only exact scores rank candidates, whatever index found them.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from data_prep.errors import InputError
from retriever.scoring import fused_maxsim_available, maxsim_scorer

__all__ = ["find_candidates", "pooled_vectors", "search_dense", "search_multi"]

FUSED_BLOCK_FACTOR = 16  # query blocks are this much larger where the fused kernel scores them


def pooled_vectors(token_vectors: Sequence[Tensor]) -> Tensor:
    """``[N, D]``: each item's mean token vector, L2-normalised (float32)."""
    pooled = torch.stack([vectors.float().mean(dim=0) for vectors in token_vectors])
    return torch.nn.functional.normalize(pooled, dim=-1)


def search_dense(queries: Tensor, pages: Tensor, k: int, index_spec: str) -> Tensor:
    """Top-``k`` page indices per query by inner product with FAISS."""
    import faiss

    data = pages.float().numpy()
    try:
        index = faiss.index_factory(data.shape[1], index_spec, faiss.METRIC_INNER_PRODUCT)
        if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
            index = faiss.index_cpu_to_all_gpus(index)
        if not index.is_trained:
            index.train(data)
    except RuntimeError as err:  # a factory string FAISS does not parse, or cannot build for these vectors
        reason = re.sub(r"^Error in .*? at \S+:\d+: ", "", str(err).strip().splitlines()[0])
        raise InputError(f"--faiss_index {index_spec!r}: FAISS cannot build this index for {len(data)} vectors of "
                         f"size {data.shape[1]} ({reason}); give another factory string (Flat always works)") from err
    index.add(data)
    _, found = index.search(queries.float().numpy(), min(k, len(data)))
    return torch.from_numpy(found)


def search_multi(queries: list[Tensor], pages: list[Tensor], k: int, block: int = 256) -> Tensor:
    """Top-``k`` page indices per query by MaxSim, query block by query block (``16 * block`` on a GPU)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    score = maxsim_scorer(pages, device)
    block = FUSED_BLOCK_FACTOR * block if fused_maxsim_available(device) else block
    found = []
    for start in tqdm(range(0, len(queries), block), desc="MaxSim search", unit="block", leave=False):
        found.append(score(queries[start:start + block]).topk(min(k, len(pages)), dim=1).indices.cpu())
    return torch.cat(found)


def find_candidates(queries, pages, multi: bool, depth: int, multi_search: str = "pooled",
                    pool_depth: int | None = None, index_spec: str = "Flat") -> list[list[int]]:
    """Candidate page indices per query (unranked: ``rank_candidates`` scores them exactly)."""
    if not len(queries):
        return []
    if not multi:
        return search_dense(queries, pages, depth, index_spec).tolist()
    if multi_search == "exact":
        return search_multi(list(queries), pages, depth).tolist()
    return search_dense(pooled_vectors(queries), pooled_vectors(pages), pool_depth or 4 * depth, index_spec).tolist()
