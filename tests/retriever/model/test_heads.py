"""Pooling, dense / multi-vector heads and Matryoshka prefixes on hand-made hidden states."""
from __future__ import annotations

import pytest
import torch

from retriever.model.heads import DenseHead, MultiVectorHead, matryoshka_prefixes, pool


def batch(padding_side: str) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Two sequences (3 and 5 real tokens) padded to 6 on one side; also returns the unpadded rows."""
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randn(n, 4, generator=gen, dtype=torch.float64) for n in (3, 5)]
    hidden = torch.full((2, 6, 4), 1e3, dtype=torch.float64)  # garbage in padded positions
    mask = torch.zeros(2, 6, dtype=torch.long)
    for i, row in enumerate(rows):
        cols = slice(6 - len(row), 6) if padding_side == "left" else slice(0, len(row))
        hidden[i, cols], mask[i, cols] = row, 1
    return hidden, mask, rows


@pytest.mark.parametrize("side", ["left", "right"])
def test_pooling_matches_definitions(side):
    hidden, mask, rows = batch(side)
    expected = {
        "last": [r[-1] for r in rows],
        "cls": [r[0] for r in rows],
        "mean": [r.mean(0) for r in rows],
        "weighted_mean": [(r * torch.arange(1, len(r) + 1, dtype=r.dtype)[:, None]).sum(0)
                          / sum(range(1, len(r) + 1)) for r in rows],
    }
    for pooling, want in expected.items():
        torch.testing.assert_close(pool(hidden, mask, pooling), torch.stack(want), rtol=0, atol=1e-12)


def test_unknown_pooling():
    with pytest.raises(ValueError, match="supported: last, mean, weighted_mean, cls"):
        DenseHead(4, pooling="max")


def test_dense_head_projection_and_normalisation():
    hidden, mask, _ = batch("right")
    head = DenseHead(4, "mean", projection_dim=3).double()
    out = head(hidden, mask)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, dtype=torch.float64))
    raw = DenseHead(4, "mean", normalize=False).double()(hidden, mask)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(2, dtype=torch.float64))


def test_multi_vector_head_zero_padding_unit_tokens():
    hidden, mask, _ = batch("left")
    out = MultiVectorHead(4, dim=8).double()(hidden, mask)
    assert out.emb.shape == (2, 6, 8) and out.mask.dtype == torch.bool
    assert torch.equal(out.mask, mask.bool())
    assert torch.all(out.emb[~out.mask] == 0)  # exactly zero, not merely small
    torch.testing.assert_close(out.emb[out.mask].norm(dim=-1), torch.ones(8, dtype=torch.float64))


def test_matryoshka_prefixes():
    emb = torch.nn.functional.normalize(torch.randn(5, 16, dtype=torch.float64), dim=-1)
    prefixes = matryoshka_prefixes(emb, [4, 8, 16])
    assert [p.shape[-1] for p in prefixes] == [4, 8, 16]
    for p in prefixes:
        torch.testing.assert_close(p.norm(dim=-1), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(prefixes[1][:, :4] / prefixes[1][:, :4].norm(dim=-1, keepdim=True), prefixes[0])
    with pytest.raises(ValueError, match="Matryoshka size 32"):
        matryoshka_prefixes(emb, [32])
