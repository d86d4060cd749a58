"""trec_eval-exact retrieval metrics through pytrec_eval, named as MTEB writes them.

Every metric is computed by pytrec_eval (the trec_eval bindings MTEB uses), so values equal trec_eval's, its
tie-breaking included (equal scores are ordered by docid, descending):

=====================  =========================================================
name                   trec_eval measure
=====================  =========================================================
``ndcg_at_k``          ``ndcg_cut.k``
``map_at_k``           ``map_cut.k``
``recall_at_k``        ``recall.k``
``precision_at_k``     ``P.k``
``hit_rate_at_k``      ``success.k`` (success@k; MTEB's name)
``mrr_at_k``           ``recip_rank`` on each ranking cut to its top k (trec_eval order)
=====================  =========================================================

Aggregates are means over the evaluated queries (those present in both run and qrels), as MTEB reports them;
values are not rounded. The cutoffs come from ``--k`` (:func:`parse_k`), one spelling for every evaluation tool.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

import pytrec_eval

__all__ = ["DEFAULT_K", "evaluate_run", "parse_k", "trec_order"]

DEFAULT_K = (1, 3, 5, 10, 100)
_MEASURES = {"ndcg_cut": "ndcg_at", "map_cut": "map_at", "recall": "recall_at", "P": "precision_at",
             "success": "hit_rate_at"}


def parse_k(text: str) -> list[int]:
    """The ``--k`` cutoffs: ``"1,5,10"`` -> ``[1, 5, 10]``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k expects comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--k expects positive integers, got {text!r}")
    return values


def trec_order(docs: Mapping[str, float]) -> list[str]:
    """Doc ids in trec_eval's ranking order: score descending, ties by docid descending."""
    return [d for d, _ in sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)]


def _mrr(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
         k_values: Sequence[int]) -> dict[str, dict[str, float]]:
    """``mrr_at_k`` per query: pytrec_eval's recip_rank on the top-k of each ranking."""
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"})
    per_query: dict[str, dict[str, float]] = {}
    for k in k_values:
        cut = {qid: {d: docs[d] for d in trec_order(docs)[:k]} for qid, docs in run.items()}
        for qid, values in evaluator.evaluate(cut).items():
            per_query.setdefault(qid, {})[f"mrr_at_{k}"] = values["recip_rank"]
    return per_query


def evaluate_run(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
                 k_values: Sequence[int] = DEFAULT_K) -> dict[str, dict]:
    """Score ``run`` ``{qid: {docid: score}}`` against ``qrels`` ``{qid: {docid: rel}}``.

    Returns ``{"aggregate": {metric: mean}, "per_query": {qid: {metric: value}}}``.
    """
    k_values = sorted(set(int(k) for k in k_values))
    if not k_values or k_values[0] < 1:
        raise ValueError(f"k values must be positive integers, got {k_values}")
    ks = ",".join(map(str, k_values))
    qrels = {q: {d: int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    run = {q: {d: float(s) for d, s in docs.items()} for q, docs in run.items()}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {f"{m}.{ks}" for m in _MEASURES})
    raw = evaluator.evaluate(run)
    mrr = _mrr(qrels, run, k_values)
    per_query: dict[str, dict[str, float]] = {}
    for qid, values in raw.items():
        row = {f"{_MEASURES[m]}_{k}": values[f"{m}_{k}"] for m in _MEASURES for k in k_values}
        row.update(mrr[qid])
        per_query[qid] = dict(sorted(row.items()))
    names = sorted(next(iter(per_query.values()))) if per_query else []
    aggregate = {n: sum(row[n] for row in per_query.values()) / len(per_query) for n in names}
    return {"aggregate": aggregate, "per_query": per_query}
