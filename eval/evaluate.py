"""Running the native evaluator on a loaded task: rank every query's pages, then score the run.

The library behind ``python -m eval.retrieval`` and training's evaluation (:mod:`retriever.training.evaluation`),
which load their tasks with :func:`eval.tasks.load_task` and call :func:`evaluate_subsets`. Ranking goes through
the sharded engine (:func:`eval.engine.score_shard`, every rank returns the same run); metrics through
:func:`eval.metrics.evaluate_run`. A task with several language subsets that share one corpus encodes that corpus
once: the subsets' queries are ranked together, their ids prefixed ``<subset>/``, and each subset is scored on its
own queries.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from eval.datasets import RetrievalData
from eval.engine import Encoder, ScoringSettings, encode_sharded_queries, score_shard
from eval.metrics import DEFAULT_K, evaluate_run
from eval.trec import Run
from retriever.process_group import RankInfo

__all__ = ["evaluate_subsets", "evaluate_task", "rank_task"]


def rank_task(encoder: Encoder, data: RetrievalData, info: RankInfo, depth: int,
              settings: ScoringSettings = ScoringSettings()) -> Run:
    """Encode, score and rank one task: the top ``depth`` pages of each query that has qrels (the others cannot be
    scored, so they are not encoded). Every rank returns the same run."""
    qids = [q for q in data.queries if q in data.qrels]
    query_emb = encode_sharded_queries(encoder, [data.queries[q] for q in qids], settings.batch_size, info)
    top = score_shard(encoder, query_emb, data.corpus_ids, data.load_images, depth, info, settings, query_ids=qids)
    return {qid: {data.corpus_ids[pos]: score for pos, score in hits} for qid, hits in zip(qids, top)}


def evaluate_task(encoder: Encoder, data: RetrievalData, info: RankInfo, k_values: Sequence[int] = DEFAULT_K,
                  depth: int | None = None,
                  settings: ScoringSettings = ScoringSettings()) -> tuple[Run, dict[str, Any]]:
    """:func:`rank_task` (``depth`` defaults to the largest k) and the run's metrics."""
    run = rank_task(encoder, data, info, depth or max(k_values), settings)
    return run, evaluate_run(data.qrels, run, k_values)


def _merged(subsets: dict[str, RetrievalData], names: Sequence[str], prefixed: bool) -> RetrievalData:
    """The queries and qrels of ``names`` (subsets sharing one corpus) as one task, ids ``<subset>/<id>``."""
    first = subsets[names[0]]
    if not prefixed:
        return first
    queries = {f"{s}/{q}": text for s in names for q, text in subsets[s].queries.items()}
    qrels = {f"{s}/{q}": docs for s in names for q, docs in subsets[s].qrels.items()}
    return RetrievalData(first.name, first.corpus_ids, first.load_images, queries, qrels)


def evaluate_subsets(encoder: Encoder, subsets: dict[str, RetrievalData], info: RankInfo,
                     k_values: Sequence[int] = DEFAULT_K, depth: int | None = None,
                     settings: ScoringSettings = ScoringSettings()) -> tuple[Run, dict[str, dict[str, Any]]]:
    """Rank every subset, encoding each distinct corpus once (its state under ``<state_dir>/corpus<i>``); returns
    the run (query ids ``<subset>/<id>`` when there are several subsets) and ``{subset: metrics}`` computed on each
    subset's own queries."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for subset, data in subsets.items():
        groups.setdefault(tuple(data.corpus_ids), []).append(subset)
    prefixed = len(subsets) > 1
    run: Run = {}
    for i, names in enumerate(groups.values()):
        state_dir = settings.state_dir / f"corpus{i}" if settings.state_dir is not None else None
        run.update(rank_task(encoder, _merged(subsets, names, prefixed), info, depth or max(k_values),
                             replace(settings, state_dir=state_dir)))
    metrics = {}
    for subset, data in subsets.items():
        prefix = f"{subset}/" if prefixed else ""
        subset_run = {q: run[prefix + q] for q in data.qrels if prefix + q in run}
        metrics[subset] = evaluate_run(data.qrels, subset_run, k_values)
    return run, metrics
