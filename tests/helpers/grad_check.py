"""Gradient comparison helpers shared by the GradCache tests: a full-batch reference and a GradCache step."""
from __future__ import annotations

import torch

from retriever.model.embeddings import cat_embeddings
from retriever.training.strategy import build_strategy
from retriever.training.gradcache import GradCache


def sgd(groups):
    return torch.optim.SGD(groups, lr=0.1)


def grads_of(*modules) -> dict[str, torch.Tensor]:
    return {f"{i}.{n}": p.grad.clone() for i, m in enumerate(modules) for n, p in m.named_parameters()
            if p.grad is not None}


def assert_close(got: dict, want: dict, rel: float = 1e-10) -> None:
    assert got.keys() == want.keys() and want
    for name in want:
        scale = want[name].abs().max().clamp_min(1e-30)
        err = ((got[name] - want[name]).abs().max() / scale).item()
        assert err <= rel, f"{name}: relative error {err:.3e}"


def reference_grads(model, loss, q, p, positives, chunk: int | None, seed: int) -> dict:
    """Full-batch gradient with graph kept: chunks forwarded in GradCache's order (same dropout masks)."""
    torch.manual_seed(seed)
    if chunk:
        q_reps = cat_embeddings([model(c) for c in model.split_inputs(q, chunk)])
        p_reps = cat_embeddings([model(c) for c in model.split_inputs(p, chunk)])
    else:
        q_reps, p_reps = model(q), model(p)
    loss(q_reps, p_reps, positives).backward()
    return grads_of(model, loss)


def gradcache_grads(model, loss, q, p, positives, chunk, seed: int, reuse: bool = False) -> dict:
    strategy = build_strategy(model, optimizer_factory=sgd, loss=loss)
    torch.manual_seed(seed)
    GradCache(model, loss, strategy, chunk, reuse_frozen_vision=reuse).step(q, p, positives)
    return grads_of(model, loss)
