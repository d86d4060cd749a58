"""Candidate search: FAISS and brute-force MaxSim search equal brute force; pooled vectors with the exact rerank
equal brute-force MaxSim."""
from __future__ import annotations

import pytest
import torch

from data_prep.errors import InputError
from retriever.mining.candidates import rank_candidates
from retriever.mining.search import find_candidates, search_dense, search_multi
from retriever.scoring import maxsim


def _brute_maxsim(q: torch.Tensor, pages: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([maxsim(q[None], torch.ones(1, len(q), dtype=torch.bool), p[None],
                               torch.ones(1, len(p), dtype=torch.bool))[0, 0] for p in pages])


def test_dense_search_matches_brute_force():
    torch.manual_seed(0)
    queries, pages = torch.randn(7, 16), torch.randn(50, 16)
    found = search_dense(queries, pages, 5, "Flat")
    assert torch.equal(found, (queries @ pages.T).topk(5, dim=1).indices)


def test_multi_search_matches_brute_force():
    torch.manual_seed(0)
    queries = [torch.randn(n, 8, dtype=torch.float64) for n in (3, 5, 2)]
    pages = [torch.randn(n, 8, dtype=torch.float64) for n in (4, 9, 1, 6, 3, 7)]
    found = search_multi(queries, pages, 3, block=2)
    for q, row in zip(queries, found):
        assert row.tolist() == _brute_maxsim(q, pages).topk(3).indices.tolist()


def test_pooled_candidates_with_exact_rerank_equal_brute_force_maxsim():
    torch.manual_seed(0)
    # pages in 4 topics (token vectors near a topic centre); a query's tokens near one topic centre
    centres = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1) * 3
    pages = [centres[i % 4] + 0.5 * torch.randn(3 + i % 5, 16) for i in range(40)]
    queries = [centres[t] + 0.5 * torch.randn(4, 16) for t in (0, 1, 2, 3, 1)]
    ids = [f"p{i}" for i in range(40)]
    pooled = find_candidates(queries, pages, True, depth=5, multi_search="pooled", pool_depth=10)
    for q, row in zip(queries, pooled):
        ranked = [c.page for c in rank_candidates(q, pages, row, ids, True)[:5]]
        brute = _brute_maxsim(q, pages).topk(5).indices.tolist()
        assert ranked == [ids[i] for i in brute]
    everything = find_candidates(queries, pages, True, depth=40, multi_search="pooled", pool_depth=40)
    for q, row in zip(queries, everything):  # with the whole corpus pooled, the full ranking is exact MaxSim
        assert [c.page for c in rank_candidates(q, pages, row, ids, True)] == \
            [ids[i] for i in _brute_maxsim(q, pages).argsort(descending=True).tolist()]


@pytest.mark.parametrize("spec, reason", [("Bogus12", "could not parse index string Bogus12"),
                                          ("IVF16,PQ3", "should be a multiple of the number of subquantizers")])
def test_a_faiss_index_that_cannot_be_built_is_a_user_error(spec, reason):
    with pytest.raises(InputError, match=f"--faiss_index '{spec}': FAISS cannot build this index for 4 vectors of "
                       f"size 8 \\(.*{reason}"):
        search_dense(torch.zeros(2, 8), torch.zeros(4, 8), 2, spec)


def test_index_search_takes_the_top_of_its_first_stage_and_recall_counts_the_exact_top():
    """Through a compressed index: the best ``rerank_depth`` pages by MaxSim over token-pooled pages (brute force
    in float64); candidate recall is the share of the exact top found."""
    from retriever.index import IndexSettings
    from retriever.index.pooling import pool_tokens
    from retriever.mining.search import candidate_recall, search_index

    gen = torch.Generator().manual_seed(3)
    queries = [torch.randn(n, 8, generator=gen, dtype=torch.float64) for n in (3, 5)]
    pages = [torch.randn(n, 8, generator=gen, dtype=torch.float64) for n in (6, 9, 4, 7, 8, 5, 6)]
    index = IndexSettings(pool_factor=2, rerank_depth=3)
    found = search_index(queries, pages, index, chunk=3).tolist()
    pooled = [pool_tokens(p, 2) for p in pages]
    for q, hits in zip(queries, found):
        assert set(hits) == set(_brute_maxsim(q, pooled).topk(3).indices.tolist())
    exact = [set(_brute_maxsim(q, pages).topk(3).indices.tolist()) for q in queries]
    assert candidate_recall(queries, pages, found, 3) == [len(e & set(f)) / 3 for e, f in zip(exact, found)]
    assert find_candidates(queries, pages, True, 3, index=index) == found


def test_index_search_over_binary_pages_is_the_sign_vectors_maxsim():
    from retriever.index import IndexSettings
    from retriever.mining.search import search_index

    gen = torch.Generator().manual_seed(4)
    queries = [torch.randn(3, 16, generator=gen) for _ in range(2)]
    pages = [torch.randn(n, 16, generator=gen) for n in (5, 2, 7, 4, 6)]
    found = search_index(queries, pages, IndexSettings(quantize="binary", rerank_depth=2))
    sign = [torch.where(p > 0, 1.0, -1.0).double() for p in pages]
    for q, hits in zip(queries, found.tolist()):
        scores = _brute_maxsim(torch.where(q > 0, 1.0, -1.0).double(), sign)
        assert sorted(scores[hits].tolist(), reverse=True) == scores.sort(descending=True).values[:2].tolist()
