"""MaxSim and dense scores against naive float64 reference loops (random masks, variable lengths, negatives)."""
from __future__ import annotations

import pytest
import torch

from retriever.model.embeddings import pad_multivector
from retriever.scoring import dense_scores, maxsim, maxsim_blocked, maxsim_lists


def _random_batch(n: int, max_len: int, dim: int, gen: torch.Generator, scattered: bool = False):
    """Padded embeddings with random lengths; ``scattered`` puts the valid tokens at random positions."""
    emb = torch.randn(n, max_len, dim, generator=gen, dtype=torch.float64)
    if scattered:
        mask = torch.rand(n, max_len, generator=gen) < 0.6
        mask[torch.arange(n), torch.randint(0, max_len, (n,), generator=gen)] = True
    else:
        lengths = torch.randint(1, max_len + 1, (n,), generator=gen)
        mask = torch.arange(max_len).unsqueeze(0) < lengths.unsqueeze(1)
    emb[~mask] = torch.randn(int((~mask).sum()), dim, generator=gen, dtype=torch.float64) * 50  # garbage padding
    return emb, mask


def _reference(q, qm, d, dm) -> torch.Tensor:
    """The definition, one query token at a time."""
    out = torch.zeros(q.shape[0], d.shape[0], dtype=torch.float64)
    for i in range(q.shape[0]):
        for j in range(d.shape[0]):
            page = d[j][dm[j]]
            out[i, j] = sum(float((page @ q[i, t]).max()) for t in range(q.shape[1]) if qm[i, t])
    return out


@pytest.mark.parametrize("scattered", [False, True])
def test_maxsim_matches_reference(scattered: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    q, qm = _random_batch(5, 7, 8, gen, scattered)
    d, dm = _random_batch(6, 11, 8, gen, scattered)
    expected = _reference(q, qm, d, dm)
    torch.testing.assert_close(maxsim(q, qm, d, dm), expected)
    torch.testing.assert_close(maxsim_blocked(q, qm, d, dm).double(), expected, rtol=1e-6, atol=1e-5)
    # tiny blocks exercise the query and page splitting
    torch.testing.assert_close(maxsim_blocked(q, qm, d, dm, block_elems=50).double(), expected, rtol=1e-6, atol=1e-5)


def test_all_negative_scores_ignore_padding() -> None:
    """With every real dot product negative, padded tokens (zero or not) must not win the max."""
    q = torch.ones(2, 3, 4, dtype=torch.float64)
    qm = torch.tensor([[True, True, False], [True, False, False]])
    d = -torch.rand(3, 5, 4, dtype=torch.float64) - 0.1
    dm = torch.tensor([[True, True, False, False, False], [True] * 5, [False, False, True, False, False]])
    d[~dm] = 0.0  # zero padding would give 0 > every real score
    expected = _reference(q, qm, d, dm)
    assert (expected < 0).all()
    torch.testing.assert_close(maxsim(q, qm, d, dm), expected)
    torch.testing.assert_close(maxsim_blocked(q, qm, d, dm).double(), expected, rtol=1e-6, atol=1e-6)


def test_maxsim_lists_keeps_page_order() -> None:
    gen = torch.Generator().manual_seed(1)
    queries = [torch.randn(int(n), 16, generator=gen) for n in torch.randint(1, 9, (4,), generator=gen)]
    pages = [torch.randn(int(n), 16, generator=gen) for n in torch.randint(1, 40, (13,), generator=gen)]
    q, qm = pad_multivector(queries)
    d, dm = pad_multivector(pages)
    expected = _reference(q.double(), qm, d.double(), dm)
    got = maxsim_lists(queries, pages, group_tokens=60, block_elems=300)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-4)


def test_maxsim_is_differentiable() -> None:
    gen = torch.Generator().manual_seed(2)
    q, qm = _random_batch(3, 4, 5, gen)
    d, dm = _random_batch(4, 6, 5, gen)
    q.requires_grad_(True)
    d.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: maxsim(a, qm, b, dm), (q, d))
    maxsim(q, qm, d, dm).sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(d.grad).all()
    assert (d.grad[~dm] == 0).all() and (q.grad[~qm] == 0).all()


def test_dense_scores_and_errors() -> None:
    q, d = torch.randn(3, 4), torch.randn(5, 4)
    torch.testing.assert_close(dense_scores(q, d), torch.einsum("qd,pd->qp", q, d))
    with pytest.raises(ValueError, match="dense_scores"):
        dense_scores(q, torch.randn(5, 3))
    with pytest.raises(ValueError, match="at least one valid token"):
        maxsim(torch.randn(1, 2, 4), torch.ones(1, 2, dtype=torch.bool), torch.randn(1, 2, 4),
               torch.zeros(1, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        maxsim(torch.randn(1, 2, 4), torch.ones(1, 2), torch.randn(1, 2, 4), torch.ones(1, 2))


def test_score_dtype_flag_applies_on_cuda_only() -> None:
    """``--score_dtype`` of the evaluation CLIs: bf16 by default, float32 on request, on CUDA; CPU keeps the input
    dtype (None); anything else is refused by argparse."""
    import argparse

    from retriever.scoring import add_score_dtype_argument, score_dtype

    parser = argparse.ArgumentParser()
    add_score_dtype_argument(parser)
    assert parser.parse_args([]).score_dtype == "bfloat16"
    assert score_dtype(parser.parse_args([]).score_dtype, torch.device("cuda")) == torch.bfloat16
    assert score_dtype(parser.parse_args(["--score_dtype", "float32"]).score_dtype, torch.device("cuda", 1)) \
        == torch.float32
    assert score_dtype("bfloat16", torch.device("cpu")) is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--score_dtype", "float16"])
