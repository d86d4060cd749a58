"""Batch planning: no page twice in a batch, true negatives only, determinism per (seed, epoch), rank split."""
from __future__ import annotations

import pytest

from retriever.training.batching import plan_epoch, rank_slice
from retriever.pairs import Pair


def _pairs(n: int = 40, shared_every: int = 5) -> list[Pair]:
    """Pairs over a small corpus where some positives are shared and some negatives are others' positives."""
    pairs = []
    for i in range(n):
        pos = (f"p{i // shared_every if i % shared_every == 0 else i}",)
        neg = (f"p{(i + 1) % n}", f"p{(i + 7) % n}", f"n{i}")
        pairs.append(Pair(query=f"q{i}", pos=pos, neg=neg))
    return pairs


@pytest.mark.parametrize("num_negatives", [0, 1, 3])
def test_no_page_twice_and_only_true_negatives(num_negatives):
    pairs = _pairs()
    plan = plan_epoch(pairs, global_batch_size=6, num_negatives=num_negatives, seed=1, epoch=0)
    assert plan, "an epoch of 40 pairs must give batches of 6"
    for batch in plan:
        assert len(batch) == 6
        pages = [page for query in batch for page in query.pages]
        assert len(pages) == len(set(pages)), "a page appears twice in one batch"
        for query in batch:
            own = set(pairs[query.pair_index].pos)
            assert query.pos in own and len(query.neg) == num_negatives
            others = set(pages) - set(query.pages)
            assert not (others & own), "a page in the batch is a positive of a query that sees it as negative"
            assert not (set(query.neg) & own)


def test_each_pair_at_most_once_per_epoch_and_deterministic():
    pairs = _pairs()
    a = plan_epoch(pairs, 4, 2, seed=3, epoch=2)
    b = plan_epoch(pairs, 4, 2, seed=3, epoch=2)
    c = plan_epoch(pairs, 4, 2, seed=3, epoch=3)
    assert a == b
    assert a != c
    used = [q.pair_index for batch in a for q in batch]
    assert len(used) == len(set(used))
    assert len(used) >= len(pairs) - 2 * 4, "too many pairs dropped from the epoch"


def test_rank_slices_partition_the_batch():
    plan = plan_epoch(_pairs(), 8, 1, seed=0, epoch=0)
    batch = plan[0]
    parts = [rank_slice(batch, r, 4) for r in range(4)]
    assert [q for part in parts for q in part] == batch
    assert all(len(part) == 2 for part in parts)


def test_short_negative_lists_are_topped_up_from_the_corpus():
    pairs = [Pair(query=f"q{i}", pos=(f"p{i}",)) for i in range(20)]
    plan = plan_epoch(pairs, 4, 2, seed=0, epoch=0)
    for batch in plan:
        for query in batch:
            assert len(query.neg) == 2 and query.pos not in query.neg
