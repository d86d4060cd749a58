"""Positive-aware selection of hard negatives from a query's ranked candidates.

The rules run in this order over the candidates of one query (ranked by exact score, best first); each candidate
is removed by the first rule it fails, and that rule's counter goes up:

1. ``positive``: one of the query's positive pages;
2. ``near_duplicate``: the same page as a positive under another id (see ``retriever.mining.duplicates``);
3. ``window``: outside ``[range_min, range_max)``, counted over the candidates that survived 1 and 2 (so
   ``range_min`` skips that many best non-positive pages, the likeliest false negatives);
4. ``relative_margin`` (NV-Retriever's TopK-PercPos): score above ``(1 - margin) * pos_score``;
5. ``absolute_margin`` (TopK-MarginPos): score above ``pos_score - margin``;
6. ``max_score``: score above a fixed cap.

``pos_score`` is the lowest score among the query's positives (with several positives, a negative must stay
below every one of them). From the survivors, ``sampling="top"`` takes the ``num_negatives`` best,
``sampling="random"`` draws ``num_negatives`` at random with a generator seeded by ``(seed, query index)`` (so the
choice does not depend on how queries are split across ranks); negatives are returned in rank order.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

from data_prep.errors import InputError

RULES = ("positive", "near_duplicate", "window", "relative_margin", "absolute_margin", "max_score")


@dataclass(frozen=True)
class MiningRules:
    """The selection settings (one per ``python -m retriever.mine`` flag)."""

    num_negatives: int = 8
    range_min: int = 0
    range_max: int = 100
    relative_margin: float | None = None
    absolute_margin: float | None = None
    max_score: float | None = None
    sampling: str = "top"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_negatives < 1:
            raise InputError("--num_negatives must be >= 1")
        if not 0 <= self.range_min < self.range_max:
            raise InputError(f"need 0 <= --range_min < --range_max, got {self.range_min} and {self.range_max}")
        if self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            raise InputError("--relative_margin must be in [0, 1)")
        if self.sampling not in ("top", "random"):
            raise InputError(f"--sampling must be 'top' or 'random', got {self.sampling!r}")


@dataclass(frozen=True)
class Candidate:
    """A retrieved page: its id, exact score and 1-based rank in the query's retrieval ranking."""

    page: str
    score: float
    rank: int


@dataclass
class Selection:
    """What the rules made of one query's candidates."""

    negatives: list[Candidate]
    pos_score: float
    removed: Counter = field(default_factory=Counter)


def select_negatives(candidates: Sequence[Candidate], positives: Sequence[str], pos_scores: Sequence[float],
                     rules: MiningRules, query_index: int,
                     is_near_duplicate: Callable[[str], bool] = lambda page: False) -> Selection:
    """Apply the rules (module docstring) to ``candidates`` (best first) of query number ``query_index``."""
    pos_score = min(pos_scores)
    removed: Counter = Counter()
    survivors: list[Candidate] = []
    window_position = 0
    for candidate in candidates:
        rule = _failed_rule(candidate, set(positives), pos_score, rules, window_position, is_near_duplicate)
        if rule not in ("positive", "near_duplicate"):
            window_position += 1
        if rule is None:
            survivors.append(candidate)
        else:
            removed[rule] += 1
    return Selection(_sample(survivors, rules, query_index), pos_score, removed)


def _failed_rule(candidate: Candidate, positives: set[str], pos_score: float, rules: MiningRules,
                 window_position: int, is_near_duplicate: Callable[[str], bool]) -> str | None:
    """The first rule ``candidate`` fails, or None when it may be a negative."""
    if candidate.page in positives:
        return "positive"
    if is_near_duplicate(candidate.page):
        return "near_duplicate"
    if not rules.range_min <= window_position < rules.range_max:
        return "window"
    if rules.relative_margin is not None and candidate.score > (1 - rules.relative_margin) * pos_score:
        return "relative_margin"
    if rules.absolute_margin is not None and candidate.score > pos_score - rules.absolute_margin:
        return "absolute_margin"
    if rules.max_score is not None and candidate.score > rules.max_score:
        return "max_score"
    return None


def _sample(survivors: list[Candidate], rules: MiningRules, query_index: int) -> list[Candidate]:
    if rules.sampling == "top" or len(survivors) <= rules.num_negatives:
        return survivors[:rules.num_negatives]
    chosen = random.Random(rules.seed * 1_000_003 + query_index).sample(survivors, rules.num_negatives)
    return sorted(chosen, key=lambda c: c.rank)
