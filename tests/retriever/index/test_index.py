"""Index compression against brute-force float64 references: token pooling (and colpali-engine's pooler), int8
and binary MaxSim, MUVERA encodings (FastEmbed) and bytes per page."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.functional import normalize

from retriever.index.muvera import encode_pages, encode_queries, fde_dim
from retriever.index.pooling import pool_tokens
from retriever.index.quantization import binary_maxsim, to_binary, to_int8
from retriever.index.scorer import IndexScorer, page_bytes
from retriever.index.settings import IndexSettings, MuveraSettings
from tests.helpers.published_refs import colpali_engine_available, import_engine


def vectors(seed: int, rows: int, dim: int = 24) -> torch.Tensor:
    return normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def maxsim64(q: torch.Tensor, p: torch.Tensor) -> float:
    return float((q.double() @ p.double().T).max(-1).values.sum())


def test_pooling_merges_each_group_of_near_copies_into_its_mean() -> None:
    centres = vectors(0, 3)
    noise = 1e-3 * torch.randn(12, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    emb = centres.repeat_interleave(4, 0) + noise                 # 3 groups of 4 near-copies
    pooled = pool_tokens(emb, factor=4)
    want = normalize(torch.stack([emb[4 * g:4 * g + 4].mean(0) for g in range(3)]), dim=-1)
    order = [int((want @ row).argmax()) for row in pooled]
    assert pooled.shape == (3, 24) and sorted(order) == [0, 1, 2]
    torch.testing.assert_close(pooled, want[order], atol=1e-12, rtol=0)
    raw = pool_tokens(emb, factor=4, renormalize=False)
    assert torch.allclose(raw.norm(dim=-1), torch.stack([emb[4 * g:4 * g + 4].mean(0) for g in order]).norm(dim=-1))
    assert pool_tokens(emb, 1) is emb and pool_tokens(emb, 5).shape[0] <= 12 // 5


@pytest.mark.skipif(not colpali_engine_available(), reason="colpali-engine is not installed")
def test_pooling_equals_colpali_engines_hierarchical_pooler() -> None:
    pooler = import_engine("colpali_engine.compression.token_pooling.hierarchical_token_pooling")
    emb = [vectors(i, n).float() for i, n in enumerate((9, 30, 17))]
    theirs = pooler.HierarchicalTokenPooler().pool_embeddings(emb, pool_factor=3)
    for mine, ref in zip((pool_tokens(e, 3) for e in emb), theirs):
        torch.testing.assert_close(mine, ref, atol=1e-6, rtol=0)


def test_int8_maxsim_is_the_scaled_integer_dot_product() -> None:
    queries, pages = [vectors(10 + i, 5) for i in range(3)], [vectors(20 + i, 7 + i) for i in range(4)]
    scorer = IndexScorer(IndexSettings(quantize="int8"), [q.float() for q in queries])
    got = scorer.stored([p.float() for p in pages])
    for i, q in enumerate(queries):
        qi = to_int8(q)
        for j, p in enumerate(pages):
            pj = to_int8(p)
            dots = qi.codes.long() @ pj.codes.long().T               # exact integers
            want = (dots.double() * qi.scales.double()[:, None] * pj.scales.double()[None]).max(-1).values.sum()
            assert abs(float(got[i, j]) - float(want)) < 1e-5 * max(1.0, abs(float(want)))
            assert (pj.dequantized().double() - p).abs().max() <= pj.scales.max() / 2 + 1e-7


def test_binary_maxsim_is_the_maxsim_of_sign_vectors() -> None:
    queries, pages = [vectors(30 + i, 4, 21) for i in range(2)], [vectors(40 + i, 3 + i, 21) for i in range(5)]
    got = binary_maxsim([to_binary(q) for q in queries], [to_binary(p) for p in pages])
    for i, q in enumerate(queries):
        for j, p in enumerate(pages):
            want = maxsim64(torch.where(q > 0, 1.0, -1.0), torch.where(p > 0, 1.0, -1.0))
            assert float(got[i, j]) == want                          # integers: exact
    assert to_binary(pages[0]).nbytes == 3 * 3                         # 21 dims -> 3 bytes per vector


def test_muvera_scores_are_the_fastembed_encodings_dot_product() -> None:
    pytest.importorskip("fastembed")
    from fastembed.postprocess import Muvera

    settings = MuveraSettings(k_sim=3, dim_proj=8, r_reps=4, seed=5)
    queries, pages = [vectors(50 + i, 4) for i in range(2)], [vectors(60 + i, 9) for i in range(3)]
    ref = Muvera(dim=24, k_sim=3, dim_proj=8, r_reps=4, random_seed=5)
    want = np.stack([ref.process_query(q.numpy()) for q in queries]) @ \
        np.stack([ref.process_document(p.numpy()) for p in pages]).T
    got = IndexScorer(IndexSettings(candidates="muvera", muvera=settings), [q.float() for q in queries]) \
        .first_stage([p.float() for p in pages])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    assert encode_pages(pages, settings).shape == (3, fde_dim(24, settings)) == (3, 4 * 2**3 * 8)
    assert encode_queries(queries, settings).shape == (2, 4 * 2**3 * 8)


def test_bytes_per_page() -> None:
    page = torch.zeros(10, 128)
    assert page_bytes(page, "none") == 10 * 128 * 2               # float16
    assert page_bytes(page, "int8") == 10 * (128 + 4)              # codes and a float32 scale per vector
    assert page_bytes(page, "binary") == 10 * 16                   # 16x fewer than float16
    assert page_bytes(page, "muvera", MuveraSettings(k_sim=3, dim_proj=8, r_reps=4)) == 4 * 8 * 8 * 2


def test_settings_from_a_spec_entry_and_their_label() -> None:
    settings = IndexSettings.from_dict({"pool_factor": 3, "candidates": "binary", "rerank_depth": 50,
                                        "quantize": "int8", "muvera_k_sim": 2}, "spec")
    assert settings.muvera.k_sim == 2 and settings.describe() == "pool 3, binary top 50 -> int8"
    assert IndexSettings().exact and IndexSettings().describe() == "float"
    with pytest.raises(Exception, match="spec: unknown option.*pool"):
        IndexSettings.from_dict({"pool": 3}, "spec")
    with pytest.raises(Exception, match="spec: quantize 'fp4'"):
        IndexSettings.from_dict({"quantize": "fp4"}, "spec")
