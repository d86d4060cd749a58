"""What a mining run did: how many candidates each rule removed, short queries, and score histograms.

Every rank accumulates a ``MiningStats`` over its queries; rank 0 merges them (``merge``), prints ``report()``
and writes ``to_json()`` next to the mined file. The histograms of the positives' scores and the chosen
negatives' scores share one set of bins, so the overlap (false-negative risk) is visible at a glance.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from retriever.mining.selection import RULES, Selection


@dataclass
class MiningStats:
    """Counters and scores over the mined queries."""

    num_negatives: int
    queries: int = 0
    short: int = 0
    removed: Counter = field(default_factory=Counter)
    pos_scores: list[float] = field(default_factory=list)
    neg_scores: list[float] = field(default_factory=list)
    # Per sampled query, the fraction of its exact top ``recall_depth`` pages an approximate candidate search found.
    candidate_recall: list[float] = field(default_factory=list)
    recall_depth: int = 0

    def add(self, selection: Selection) -> None:
        self.queries += 1
        self.short += len(selection.negatives) < self.num_negatives
        self.removed.update(selection.removed)
        self.pos_scores.append(selection.pos_score)
        self.neg_scores.extend(c.score for c in selection.negatives)

    def merge(self, other: MiningStats) -> None:
        self.queries += other.queries
        self.short += other.short
        self.removed.update(other.removed)
        self.pos_scores += other.pos_scores
        self.neg_scores += other.neg_scores
        self.candidate_recall += other.candidate_recall
        self.recall_depth = max(self.recall_depth, other.recall_depth)

    def histograms(self, bins: int = 10) -> dict[str, Any]:
        """Counts of positive and negative scores over shared bin edges."""
        scores = self.pos_scores + self.neg_scores
        if not scores:
            return {"edges": [], "positives": [], "negatives": []}
        edges = np.histogram_bin_edges(scores, bins=bins)
        return {"edges": edges.tolist(), "positives": np.histogram(self.pos_scores, edges)[0].tolist(),
                "negatives": np.histogram(self.neg_scores, edges)[0].tolist()}

    def to_json(self) -> dict[str, Any]:
        return {"queries": self.queries, "num_negatives": self.num_negatives,
                "queries_short_of_negatives": self.short, "negatives_mined": len(self.neg_scores),
                "removed_by_rule": {rule: self.removed.get(rule, 0) for rule in RULES},
                "histograms": self.histograms(), **self._recall()}

    def _recall(self) -> dict[str, Any]:
        if not self.candidate_recall:
            return {}
        return {"candidate_recall": {"depth": self.recall_depth, "queries": len(self.candidate_recall),
                                     "mean": sum(self.candidate_recall) / len(self.candidate_recall),
                                     "min": min(self.candidate_recall)}}

    def report(self) -> str:
        """A plain-text summary for the terminal."""
        lines = [f"{self.queries} queries, {len(self.neg_scores)} negatives mined; "
                 f"{self.short} queries have fewer than {self.num_negatives}",
                 "candidates removed by rule: " + ", ".join(f"{r}={self.removed.get(r, 0)}" for r in RULES)]
        if self.candidate_recall:
            recall = self._recall()["candidate_recall"]
            lines.append(f"candidate search: found {recall['mean']:.3f} of the exact top {recall['depth']} on average "
                         f"(lowest {recall['min']:.3f}) over {recall['queries']} sampled queries")
        hist = self.histograms()
        if hist["edges"]:
            lines.append(f"{'score bin':>22} {'positives':>10} {'negatives':>10}")
            for i, (pos, neg) in enumerate(zip(hist["positives"], hist["negatives"])):
                low, high = hist["edges"][i], hist["edges"][i + 1]
                lines.append(f"[{low:9.4f}, {high:9.4f}) {pos:10d} {neg:10d}")
        return "\n".join(lines)

    @classmethod
    def from_json_parts(cls, num_negatives: int, parts: list[dict[str, Any]]) -> MiningStats:
        """Merge the raw per-rank records written by ``raw()``."""
        total = cls(num_negatives)
        for part in parts:
            total.merge(cls(num_negatives, part["queries"], part["short"], Counter(part["removed"]),
                            part["pos_scores"], part["neg_scores"], part.get("candidate_recall", []),
                            part.get("recall_depth", 0)))
        return total

    def raw(self) -> dict[str, Any]:
        """Everything needed to merge this rank's statistics into rank 0's."""
        return {"queries": self.queries, "short": self.short, "removed": dict(self.removed),
                "pos_scores": self.pos_scores, "neg_scores": self.neg_scores,
                "candidate_recall": self.candidate_recall, "recall_depth": self.recall_depth}
