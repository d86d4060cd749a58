"""GradCache is exact: parameter gradients equal the full-batch gradient (float64, relative 1e-10), toy encoder."""
from __future__ import annotations

import copy

import pytest
import torch

from tests.helpers.grad_check import grads_of, sgd, assert_close, gradcache_grads, reference_grads
from tests.helpers.toy_encoder import ToyEncoder, toy_batch
from retriever.training.strategy import build_strategy
from retriever.training.gradcache import GradCache, auto_chunk_size
from retriever.training.losses import ContrastiveLoss

N_Q, N_NEG = 5, 2  # 5 queries, 7 pages (2 hard negatives): chunk 2 and 3 leave uneven last chunks


def _setup(multi: bool, dropout: float = 0.1, freeze_vision: bool = False, **loss_kw):
    torch.manual_seed(0)
    model = ToyEncoder(multi=multi, dropout=dropout, freeze_vision=freeze_vision).double()
    loss = ContrastiveLoss(temperature=0.05, **loss_kw).double()
    q, p, positives = toy_batch(N_Q, N_Q + N_NEG, seed=1)
    return model, loss, q, p, positives


HEADS = {
    "dense": dict(multi=False),
    "multi": dict(multi=True),
    "multi_normalized": dict(multi=True, normalize_query_length=True),
    "matryoshka": dict(multi=False, matryoshka_dims=[8, 4, 2], matryoshka_weights=[1.0, 0.5, 0.25]),
    "multi_matryoshka": dict(multi=True, matryoshka_dims=[8, 4]),
    "symmetric_learnable": dict(multi=False, symmetric=True, learnable_temperature=True),
}


@pytest.mark.parametrize("chunk", [1, 2, 3])
@pytest.mark.parametrize("head", list(HEADS))
def test_gradcache_equals_full_batch_with_dropout(head: str, chunk: int) -> None:
    kw = dict(HEADS[head])
    model, loss, q, p, positives = _setup(kw.pop("multi"), **kw)
    want = reference_grads(copy.deepcopy(model), copy.deepcopy(loss), q, p, positives, chunk, seed=7)
    got = gradcache_grads(model, loss, q, p, positives, chunk, seed=7)
    assert_close(got, want)


@pytest.mark.parametrize("multi", [False, True])
def test_gradcache_equals_single_forward_without_dropout(multi: bool) -> None:
    model, loss, q, p, positives = _setup(multi, dropout=0.0)
    want = reference_grads(copy.deepcopy(model), copy.deepcopy(loss), q, p, positives, None, seed=0)
    assert_close(gradcache_grads(model, loss, q, p, positives, 2, seed=0), want)


def test_plain_mode_equals_full_batch() -> None:
    model, loss, q, p, positives = _setup(True, dropout=0.0)
    want = reference_grads(copy.deepcopy(model), copy.deepcopy(loss), q, p, positives, None, seed=0)
    assert_close(gradcache_grads(model, loss, q, p, positives, None, seed=0), want)


def test_dropout_is_replayed() -> None:
    """Without RNG replay the second pass would draw new masks: check the replayed reps match the first pass."""
    model, loss, q, p, positives = _setup(False, dropout=0.5)
    strategy = build_strategy(model, optimizer_factory=sgd)
    gc = GradCache(model, loss, strategy, 2)
    first = gc._first_pass(p)
    with first.rng.replay():
        again = strategy.module(p)
    assert torch.equal(again.detach(), first.reps)
    assert not torch.equal(strategy.module(p).detach(), first.reps)  # dropout is really random


@pytest.mark.parametrize("multi", [False, True])
def test_frozen_vision_reuse_equals_recompute(multi: bool) -> None:
    model, loss, q, p, positives = _setup(multi, freeze_vision=True)
    want = gradcache_grads(copy.deepcopy(model), copy.deepcopy(loss), q, p, positives, 2, seed=3)
    calls = []
    model.vision.fc1.register_forward_hook(lambda *_: calls.append(1))
    got = gradcache_grads(model, loss, q, p, positives, 2, seed=3, reuse=True)
    assert_close(got, want)
    assert len(calls) == 4  # 7 pages in chunks of 2: the tower ran in the first pass only


def test_reuse_needs_frozen_vision() -> None:
    model, loss, *_ = _setup(False)
    with pytest.raises(ValueError, match="frozen vision"):
        GradCache(model, loss, build_strategy(model, optimizer_factory=sgd), 2, reuse_frozen_vision=True)


def test_optimizer_step_and_accumulation() -> None:
    """Two accumulated micro-steps = gradient of the mean of the two losses; one optimizer step applies it."""
    model, loss, q, p, positives = _setup(False, dropout=0.0)
    ref = copy.deepcopy(model)
    strategy = build_strategy(model, optimizer_factory=sgd, gradient_accumulation_steps=2, max_grad_norm=1e9)
    gc = GradCache(model, loss, strategy, 2)
    q2, p2, pos2 = toy_batch(N_Q, N_Q + N_NEG, seed=5)
    gc.step(q, p, positives)
    assert strategy.micro_step == 1 and strategy.sync_due()
    gc.step(q2, p2, pos2)
    ((loss(ref(q), ref(p), positives) + loss(ref(q2), ref(p2), pos2)) / 2).backward()
    assert_close(grads_of(model), grads_of(ref))
    norm = strategy.optimizer_step()
    want_norm = torch.sqrt(sum(g.square().sum() for g in grads_of(ref).values())).item()
    assert norm == pytest.approx(want_norm, rel=1e-10)
    for (name, a), b in zip(model.named_parameters(), ref.parameters()):
        assert torch.allclose(a, b - 0.1 * b.grad, rtol=0, atol=1e-12), name
        assert a.grad is None


def test_bf16_autocast_runs() -> None:
    """bf16 autocast: no exactness claim, but the step runs and produces finite gradients."""
    torch.manual_seed(0)
    model = ToyEncoder(multi=True).float()
    q, p, positives = toy_batch(N_Q, N_Q + N_NEG, seed=1)
    p = {**p, "patches": p["patches"].float()}
    strategy = build_strategy(model, optimizer_factory=sgd)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = GradCache(model, ContrastiveLoss(), strategy, 2).step(q, p, positives)
    assert torch.isfinite(torch.tensor(out["loss"]))
    assert all(torch.isfinite(g).all() for g in grads_of(model).values())


def test_auto_chunk_size_cpu_fallback() -> None:
    model, *_ = _setup(False)
    assert auto_chunk_size(model, per_device_batch_size=4) == 4
    assert auto_chunk_size(model, per_device_batch_size=64) == 8
