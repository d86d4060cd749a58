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
* Multi-vector heads through a compressed index (:func:`search_index`, ``--candidates`` / ``--pool_factor``): the
  best ``rerank_depth`` pages by MUVERA encodings, binary or int8 MaxSim, or MaxSim over token-pooled pages
  (:mod:`retriever.index`), reranked like the others. :func:`candidate_recall` measures, on a sample of queries, how
  much of the exact top-k such a search finds.

The indices found here are unranked: only exact scores rank candidates, whatever index found them.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from data_prep.errors import InputError
from retriever.index import IndexScorer, IndexSettings
from retriever.scoring import fused_maxsim_available, maxsim_scorer

__all__ = ["candidate_recall", "find_candidates", "pooled_vectors", "search_dense", "search_index", "search_multi"]

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


def search_index(queries: list[Tensor], pages: list[Tensor], settings: IndexSettings, chunk: int = 256) -> Tensor:
    """The best ``settings.rerank_depth`` page indices per query by the index's first stage (by MaxSim over the
    pooled, quantized pages when ``candidates`` is exact), chunk by chunk."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scorer = IndexScorer(settings, queries, device)
    k = min(settings.rerank_depth, len(pages))
    best = torch.full((len(queries), 0), float("-inf")), torch.zeros(len(queries), 0, dtype=torch.long)
    for start in tqdm(range(0, len(pages), chunk), desc="index search", unit="chunk", leave=False):
        part = scorer.pages(pages[start:start + chunk])
        scores = scorer.first_stage(part) if scorer.two_stage else scorer.stored(part)
        values = torch.cat([best[0], scores], 1)
        indices = torch.cat([best[1], torch.arange(start, start + len(part)).expand(len(queries), -1)], 1)
        top = values.topk(min(k, values.shape[1]), dim=1).indices
        best = values.gather(1, top), indices.gather(1, top)
    return best[1]


def candidate_recall(queries: list[Tensor], pages: list[Tensor], candidates: list[list[int]], depth: int
                     ) -> list[float]:
    """Per query, the fraction of its exact MaxSim top ``depth`` pages that ``candidates`` holds."""
    exact = search_multi(queries, pages, depth).tolist()
    return [len(set(want) & set(found)) / len(want) for want, found in zip(exact, candidates)]


def find_candidates(queries, pages, multi: bool, depth: int, multi_search: str = "pooled",
                    pool_depth: int | None = None, index_spec: str = "Flat",
                    index: IndexSettings | None = None) -> list[list[int]]:
    """Candidate page indices per query (unranked: ``rank_candidates`` scores them exactly); ``index`` (not exact)
    searches multi-vector pages through a compressed index instead of ``multi_search``."""
    if not len(queries):
        return []
    if not multi:
        return search_dense(queries, pages, depth, index_spec).tolist()
    if index is not None and not index.exact:
        return search_index(list(queries), pages, index).tolist()
    if multi_search == "exact":
        return search_multi(list(queries), pages, depth).tolist()
    return search_dense(pooled_vectors(queries), pooled_vectors(pages), pool_depth or 4 * depth, index_spec).tolist()
