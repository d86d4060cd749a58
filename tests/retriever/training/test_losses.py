"""ContrastiveLoss against naive references; chunked MaxSim equals unchunked and keeps autograd memory bounded."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from retriever.model.embeddings import MultiVector
from retriever.scoring import chunked_maxsim, maxsim
from retriever.training.losses import ContrastiveLoss
from tests.helpers.published_refs import colpali_engine_available, import_engine

T = 0.05


def _dense(n: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def _multi(n: int, length: int, seed: int, d: int = 8) -> MultiVector:
    gen = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(n, length, d, generator=gen, dtype=torch.float64), dim=-1)
    lengths = torch.randint(1, length + 1, (n,), generator=gen)
    mask = torch.arange(length)[None] < lengths[:, None]
    return MultiVector(emb.masked_fill(~mask[..., None], 0.0), mask)


def naive_loss(scores: torch.Tensor, positives: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per query, mean over its positives of -log(e^pos / (e^pos + sum_neg w * e^neg)); mean over queries."""
    weight = torch.ones_like(scores) if weight is None else weight
    per_query = []
    for i in range(scores.shape[0]):
        terms = []
        negs = (~positives[i]).nonzero().flatten()
        for p in positives[i].nonzero().flatten():
            pos = torch.exp(scores[i, p] / T)
            terms.append(-torch.log(pos / (pos + (weight[i, negs] * torch.exp(scores[i, negs] / T)).sum())))
        per_query.append(torch.stack(terms).mean())
    return torch.stack(per_query).mean()


def test_single_positive_is_cross_entropy() -> None:
    q, p = _dense(4), _dense(7, seed=1)  # 3 extra pages = hard negatives
    positives = torch.zeros(4, 7, dtype=torch.bool)
    positives[torch.arange(4), torch.arange(4)] = True
    got = ContrastiveLoss(temperature=T)(q, p, positives)
    assert torch.allclose(got, F.cross_entropy(q @ p.T / T, torch.arange(4)), rtol=1e-12)


def test_multiple_positives_match_naive() -> None:
    q, p = _dense(4), _dense(6, seed=1)
    positives = torch.zeros(4, 6, dtype=torch.bool)
    positives[torch.arange(4), torch.arange(4)] = True
    positives[0, 4] = positives[2, 5] = positives[2, 1] = True
    got = ContrastiveLoss(temperature=T)(q, p, positives)
    assert torch.allclose(got, naive_loss(q @ p.T, positives), rtol=1e-12)


def test_symmetric_adds_page_to_query_term() -> None:
    q, p = _dense(3), _dense(5, seed=1)
    positives = torch.zeros(3, 5, dtype=torch.bool)
    positives[torch.arange(3), torch.arange(3)] = True
    positives[1, 3] = True  # page 4 is nobody's positive: it has no page->query term
    s = q @ p.T
    col = positives.any(0)
    want = 0.5 * (naive_loss(s, positives) + naive_loss(s.T[col], positives.T[col]))
    assert torch.allclose(ContrastiveLoss(temperature=T, symmetric=True)(q, p, positives), want, rtol=1e-12)


def test_matryoshka_is_weighted_sum_over_prefixes() -> None:
    q, p = _dense(4, d=16), _dense(4, d=16, seed=1)
    positives = torch.eye(4, dtype=torch.bool)
    loss = ContrastiveLoss(temperature=T, matryoshka_dims=[16, 8, 4], matryoshka_weights=[1.0, 0.5, 0.25])
    want = sum(w * naive_loss(F.normalize(q[:, :d], dim=-1) @ F.normalize(p[:, :d], dim=-1).T, positives)
               for d, w in [(16, 1.0), (8, 0.5), (4, 0.25)])
    assert torch.allclose(loss(q, p, positives), want, rtol=1e-12)


@pytest.mark.parametrize("mode", ["drop", "downweight"])
def test_false_negative_guard(mode: str) -> None:
    q, p = _dense(4), _dense(6, seed=1)
    p[5] = F.normalize(q[0] + 0.05 * p[5], dim=0)  # page 5 is a near-duplicate of query 0's answer: suspicious
    positives = torch.eye(4, 6, dtype=torch.bool)
    s = q @ p.T
    flagged = (s > 0.9 * (s * positives).sum(1, keepdim=True)) & ~positives
    assert flagged[0, 5]
    weight = torch.where(flagged, torch.tensor(0.0 if mode == "drop" else 0.1, dtype=s.dtype), torch.tensor(1.0, dtype=s.dtype))
    loss = ContrastiveLoss(temperature=T, false_negative_factor=0.9, false_negative_mode=mode)
    assert torch.allclose(loss(q, p, positives), naive_loss(s, positives, weight), rtol=1e-12)
    assert not torch.allclose(loss(q, p, positives), naive_loss(s, positives), rtol=1e-6)


def test_query_without_negatives_has_zero_loss_and_finite_gradients() -> None:
    q, p = _dense(2).requires_grad_(), _dense(2, seed=1)
    positives = torch.tensor([[True, True], [False, True]])  # query 0: every page is a positive
    loss = ContrastiveLoss(temperature=T)(q, p, positives)
    loss.backward()
    assert torch.isfinite(q.grad).all()
    assert torch.allclose(loss, naive_loss(q.detach()[1:] @ p.T, positives[1:]) / 2, rtol=1e-12)


def test_multivector_loss_uses_maxsim() -> None:
    q, p = _multi(3, 4, seed=0), _multi(5, 6, seed=1)
    positives = torch.eye(3, 5, dtype=torch.bool)
    want = naive_loss(maxsim(q.emb, q.mask, p.emb, p.mask), positives)
    assert torch.allclose(ContrastiveLoss(temperature=T, score_chunk_size=2)(q, p, positives), want, rtol=1e-12)


@pytest.mark.skipif(not colpali_engine_available(), reason="colpali-engine is not installed")
def test_query_length_normalisation_equals_colpali_engine_colbert_loss() -> None:
    """With ``normalize_query_length`` the multi-vector loss and its gradients are colpali-engine's ``ColbertLoss``
    (``normalize_scores=True``, its default) in float64, on queries of different lengths (zero-padded there,
    masked here); without it the loss differs (it is the raw-sum loss, the behaviour before)."""
    colbert = import_engine("colpali_engine.loss.late_interaction_losses").ColbertLoss(temperature=0.02)
    q, p = _multi(5, 7, seed=3), _multi(5, 9, seed=4)
    p = MultiVector(F.normalize(torch.randn(5, 9, 8, generator=torch.Generator().manual_seed(5),
                                            dtype=torch.float64), dim=-1), torch.ones(5, 9, dtype=torch.bool))
    q_emb = q.emb.clone().requires_grad_(True)
    q_ref = q.emb.clone().requires_grad_(True)
    ours = ContrastiveLoss(temperature=0.02, normalize_query_length=True).double()(
        MultiVector(q_emb, q.mask), p, torch.eye(5, dtype=torch.bool))
    want = colbert(q_ref, p.emb)
    ours.backward()
    want.backward()
    assert torch.allclose(ours, want, rtol=1e-12, atol=0)
    real = q.mask  # colpali-engine's zero padding receives a gradient too; it is not an input of ours
    assert torch.allclose(q_emb.grad[real], q_ref.grad[real], rtol=1e-10, atol=1e-14)
    raw = ContrastiveLoss(temperature=0.02).double()(q, p, torch.eye(5, dtype=torch.bool))
    assert not torch.allclose(raw, want, rtol=1e-3)


def test_query_length_normalisation_leaves_dense_scores_alone() -> None:
    q, p = _dense(4), _dense(6, seed=1)
    positives = torch.eye(4, 6, dtype=torch.bool)
    assert torch.equal(ContrastiveLoss(temperature=T, normalize_query_length=True)(q, p, positives),
                       ContrastiveLoss(temperature=T)(q, p, positives))


@pytest.mark.parametrize("chunk", [1, 2, 3, 100])
def test_chunked_maxsim_equals_unchunked_values_and_gradients(chunk: int) -> None:
    q, p = _multi(5, 4, seed=0), _multi(7, 6, seed=1)
    weights = torch.randn(5, 7, dtype=torch.float64)
    grads = []
    for fn in (lambda a, b: maxsim(a, q.mask, b, p.mask), lambda a, b: chunked_maxsim(a, q.mask, b, p.mask, chunk)):
        a, b = q.emb.clone().requires_grad_(), p.emb.clone().requires_grad_()
        out = fn(a, b)
        (out * weights).sum().backward()
        grads.append((out.detach(), a.grad, b.grad))
    for want, got in zip(*grads):
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-14)


def _saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward while running ``fn``."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_chunked_maxsim_saves_only_its_inputs() -> None:
    """Autograd memory of the chunked path is O(inputs), the naive path's grows with Nq*Nd*Lq*Ld."""
    q, p = _multi(16, 8, seed=0), _multi(32, 64, seed=1)
    a, b = q.emb.clone().requires_grad_(), p.emb.clone().requires_grad_()
    inputs = sum(t.numel() * t.element_size() for t in (a, q.mask, b, p.mask))
    chunked = _saved_bytes(lambda: chunked_maxsim(a, q.mask, b, p.mask, 4))
    naive = _saved_bytes(lambda: maxsim(a, q.mask, b, p.mask))
    assert chunked <= inputs
    assert naive > 10 * inputs  # the [Nq, Lq, Nd, Ld] block: what the chunked path avoids


def test_learnable_temperature_is_a_trained_parameter() -> None:
    q, p = _dense(3).requires_grad_(), _dense(3, seed=1)
    fixed = ContrastiveLoss(temperature=T)
    assert list(fixed.parameters()) == []
    learnable = ContrastiveLoss(temperature=T, learnable_temperature=True).double()
    assert math.isclose(learnable.scale().item(), 1 / T, rel_tol=1e-6)
    learnable(q, p, torch.eye(3, dtype=torch.bool)).backward()
    assert learnable.logit_scale.grad is not None and learnable.logit_scale.grad.abs() > 0
    assert "logit_scale" in learnable.state_dict()


def test_bad_inputs_raise_clear_errors() -> None:
    q, p = _dense(3), _dense(4, seed=1)
    loss = ContrastiveLoss()
    with pytest.raises(ValueError, match="shape"):
        loss(q, p, torch.eye(3, dtype=torch.bool))
    no_pos = torch.eye(3, 4, dtype=torch.bool)
    no_pos[1, 1] = False
    with pytest.raises(ValueError, match=r"queries \[1\] have no positive"):
        loss(q, p, no_pos)
    with pytest.raises(TypeError, match="both"):
        loss(q, _multi(4, 2, seed=0), torch.eye(3, 4, dtype=torch.bool))
