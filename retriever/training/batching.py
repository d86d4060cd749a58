"""Global contrastive batches: deterministic per (seed, epoch), no page twice, split across ranks.

How an epoch is planned (``plan_epoch``):

1. The pairs are shuffled with a generator seeded by ``(seed, epoch)``.
2. Each pair picks one positive and ``num_negatives`` hard negatives with its own generator seeded by
   ``(seed, epoch, pair index)``, so a pair's choice does not depend on which batch it lands in. Pairs with too
   few hard negatives are topped up with random pages of the corpus.
3. Pairs fill a global batch of ``per_device_batch_size * world_size`` queries in shuffled order. A pair is
   deferred to the next batch when one of its pages is already in the batch, or when a page in the batch is one of
   its positives (or one of its pages is a positive of a query already in the batch). So a batch never holds the
   same page twice, and every page a query sees that is not its own positive is a true negative for it.
4. A trailing batch that cannot be filled is dropped, so all ranks always get equal shapes.

Rank ``r`` takes queries ``[r*b, (r+1)*b)`` of each global batch together with their pages, so the positive
mask of the whole batch is block-diagonal across ranks, which is what the cross-rank loss relies on.
The plan is a pure function of its arguments: resuming at step ``k`` re-plans the epoch and skips ``k`` batches.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset

from retriever.pairs import Pair


@dataclass(frozen=True)
class PlannedQuery:
    """One query of a planned batch: the index of its pair and the pages it brings."""

    pair_index: int
    pos: str
    neg: tuple[str, ...]

    @property
    def pages(self) -> tuple[str, ...]:
        return (self.pos,) + self.neg


def plan_epoch(pairs: list[Pair], global_batch_size: int, num_negatives: int, seed: int, epoch: int,
               corpus: list[str] | None = None) -> list[list[PlannedQuery]]:
    """All global batches of one epoch, in order (see the module docstring for the rules)."""
    if global_batch_size < 1:
        raise ValueError("the global batch size must be at least 1")
    corpus = corpus if corpus is not None else corpus_of(pairs)
    order = torch.randperm(len(pairs), generator=_generator(seed, epoch)).tolist()
    pending, batches = deque(order), []
    while len(pending) >= global_batch_size:
        batch, deferred = _fill_batch(pairs, pending, global_batch_size, num_negatives, seed, epoch, corpus)
        if len(batch) < global_batch_size:
            break
        batches.append(batch)
        pending.extendleft(reversed(deferred))
    return batches


def corpus_of(pairs: list[Pair]) -> list[str]:
    """Every page id the pairs name, in first-seen order (the pool that tops up short negative lists)."""
    return list(dict.fromkeys(page for pair in pairs for page in pair.pos + pair.neg))


def _fill_batch(pairs, pending: deque, size: int, num_negatives: int, seed: int, epoch: int, corpus: list[str]):
    batch: list[PlannedQuery] = []
    deferred: list[int] = []
    pages_in: set[str] = set()
    positives_in: set[str] = set()
    while pending and len(batch) < size:
        index = pending.popleft()
        pair = pairs[index]
        planned = _choose_pages(pair, index, num_negatives, seed, epoch, corpus, pages_in | positives_in)
        clash = planned is None or bool(set(planned.pages) & (pages_in | positives_in)) or bool(set(pair.pos) & pages_in)
        if clash:
            deferred.append(index)
            continue
        batch.append(planned)
        pages_in.update(planned.pages)
        positives_in.update(pair.pos)
    return batch, deferred


def _choose_pages(pair: Pair, index: int, num_negatives: int, seed: int, epoch: int, corpus: list[str],
                  taken: set[str]) -> PlannedQuery | None:
    """One positive and ``num_negatives`` negatives for a pair; None when no page choice can fit the batch."""
    rng = _generator(seed, epoch, index)
    pos = pair.pos[int(torch.randint(len(pair.pos), (1,), generator=rng))]
    negatives = [pair.neg[i] for i in torch.randperm(len(pair.neg), generator=rng).tolist()][:num_negatives]
    if len(negatives) < num_negatives:
        negatives += _random_pages(corpus, num_negatives - len(negatives), rng, set(pair.pos) | set(negatives) | taken)
        if len(negatives) < num_negatives:
            return None
    return PlannedQuery(pair_index=index, pos=pos, neg=tuple(negatives))


def _random_pages(corpus: list[str], count: int, rng: torch.Generator, exclude: set[str]) -> list[str]:
    """Up to ``count`` distinct corpus pages outside ``exclude`` (bounded number of draws)."""
    chosen: list[str] = []
    for _ in range(8):
        draws = torch.randint(len(corpus), (4 * count,), generator=rng).tolist()
        for i in draws:
            page = corpus[i]
            if page not in exclude and page not in chosen:
                chosen.append(page)
                if len(chosen) == count:
                    return chosen
    return chosen


def _generator(*key: int) -> torch.Generator:
    seed = 0
    for part in key:
        seed = (seed * 1_000_003 + int(part) + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def rank_slice(batch: list[PlannedQuery], rank: int, world_size: int) -> list[PlannedQuery]:
    """This rank's queries of a global batch."""
    per_rank = len(batch) // world_size
    return batch[rank * per_rank:(rank + 1) * per_rank]


class EpochBatches(Dataset):
    """A rank's batches of one epoch, loaded and processed (for a DataLoader with ``batch_size=None``).

    Item ``i`` is batch ``start + i`` of the epoch: the processor outputs for its queries and pages, the local
    positive mask ``[queries, pages]`` and the page ids (for logs and the resume test).
    """

    def __init__(self, plan: list[list[PlannedQuery]], start: int, rank: int, world_size: int, pairs: list[Pair],
                 get_image: Callable[[str], Image.Image], prepare_queries: Callable, prepare_pages: Callable):
        self.plan, self.start = plan, start
        self.rank, self.world_size = rank, world_size
        self.pairs, self.get_image = pairs, get_image
        self.prepare_queries, self.prepare_pages = prepare_queries, prepare_pages

    def __len__(self) -> int:
        return max(0, len(self.plan) - self.start)

    def __getitem__(self, i: int) -> dict:
        local = rank_slice(self.plan[self.start + i], self.rank, self.world_size)
        page_ids = [page for query in local for page in query.pages]
        column = {page: j for j, page in enumerate(page_ids)}
        positives = torch.zeros(len(local), len(page_ids), dtype=torch.bool)
        for row, query in enumerate(local):
            for page in self.pairs[query.pair_index].pos:
                if page in column:
                    positives[row, column[page]] = True
        queries = [self.pairs[query.pair_index].query for query in local]
        images = [self.get_image(page) for page in page_ids]
        return {
            "query_inputs": self.prepare_queries(queries),
            "page_inputs": self.prepare_pages(images, ids=page_ids),
            "positives": positives,
            "page_ids": page_ids,
            "pair_indices": [query.pair_index for query in local],
        }
