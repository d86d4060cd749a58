"""CLI: native sharded retrieval evaluation (ViDoRe / BEIR layout) of a checkpoint, single process or torchrun.

Per task it writes ``<out>/<task>/metrics.json`` (aggregate, per-subset and per-query metrics),
``<out>/<task>/run.trec`` (top ``--depth`` pages per query), and overall ``<out>/metrics.json`` (per task and their
average) and ``<out>/results.md`` (a short markdown table, one row per task and per language subset). Finished
tasks are skipped on rerun; an interrupted task resumes from its last scored chunk. See eval.engine for the
sharding design.

MTEB tasks (ViDoRe v2/v3) are scored per language subset as MTEB scores them (:mod:`eval.mteb_tasks`): the task's
aggregate is mteb's ``TaskResult.get_score`` average over subsets, its ``main_score`` the task's main metric.
Subsets sharing a corpus are ranked in one pass (their query ids become ``<subset>/<id>`` in run.trec and
per_query). ``--mteb_results DIR`` also writes each evaluated task as mteb's own result JSON.

Example: ``torchrun --nproc_per_node 2 -m eval.retrieval --model ckpt --tasks vidore_v1 --out results/``
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from data_prep.errors import InputError, cli
from data_prep.outputs import write_text_atomic
from eval.datasets import RetrievalData, TaskSource, load_retrieval_data, resolve_tasks
from eval.engine import Encoder, encode_sharded_queries, init_distributed, score_shard
from eval.metrics import DEFAULT_K, evaluate_run
from eval.mteb_tasks import get_task, load_subsets, save_task_result, subset_average, task_result
from eval.mteb_wrapper import local_task, model_meta
from eval.score_run import parse_k
from eval.trec import Run, write_run
from retriever.model.saved import add_model_arguments, load_encoder_from_args
from retriever.model.scoring import add_score_dtype_argument, score_dtype
from retriever.process_group import RankInfo

__all__ = ["evaluate_subsets", "evaluate_task", "main", "markdown_table", "rank_task"]

logger = logging.getLogger(__name__)
TABLE_METRICS = ("main_score", "ndcg_at_5", "ndcg_at_10", "recall_at_10", "mrr_at_10")


def rank_task(encoder: Encoder, data: RetrievalData, info: RankInfo, depth: int, batch_size: int = 8,
              chunk_pages: int = 256, score_device: str | torch.device = "cpu",
              compute_dtype: torch.dtype | None = None, state_dir: Path | None = None) -> Run:
    """Encode, score and rank one task: the top ``depth`` pages of each query that has qrels (the others cannot be
    scored, so they are not encoded). Every rank returns the same run."""
    qids = [q for q in data.queries if q in data.qrels]
    query_emb = encode_sharded_queries(encoder, [data.queries[q] for q in qids], batch_size, info)
    top = score_shard(encoder, query_emb, len(data.corpus_ids), data.load_images, data.corpus_ids, depth, info,
                      batch_size, chunk_pages, score_device, compute_dtype, state_dir)
    return {qid: {data.corpus_ids[pos]: score for pos, score in hits} for qid, hits in zip(qids, top)}


def evaluate_task(encoder: Encoder, data: RetrievalData, info: RankInfo, k_values: Sequence[int] = DEFAULT_K,
                  depth: int | None = None, batch_size: int = 8, chunk_pages: int = 256,
                  score_device: str | torch.device = "cpu", compute_dtype: torch.dtype | None = None,
                  state_dir: Path | None = None) -> tuple[Run, dict[str, Any]]:
    """:func:`rank_task` (``depth`` defaults to the largest k) and the run's metrics."""
    run = rank_task(encoder, data, info, depth or max(k_values), batch_size, chunk_pages, score_device,
                    compute_dtype, state_dir)
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
                     k_values: Sequence[int] = DEFAULT_K, depth: int | None = None, batch_size: int = 8,
                     chunk_pages: int = 256, score_device: str | torch.device = "cpu",
                     compute_dtype: torch.dtype | None = None,
                     state_dir: Path | None = None) -> tuple[Run, dict[str, dict[str, Any]]]:
    """Rank every subset, encoding each distinct corpus once; returns the run (query ids ``<subset>/<id>`` when
    there are several subsets) and ``{subset: metrics}`` computed on each subset's own queries."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for subset, data in subsets.items():
        groups.setdefault(tuple(data.corpus_ids), []).append(subset)
    prefixed = len(subsets) > 1
    run: Run = {}
    for i, names in enumerate(groups.values()):
        group_dir = state_dir / f"corpus{i}" if state_dir is not None else None
        run.update(rank_task(encoder, _merged(subsets, names, prefixed), info, depth or max(k_values), batch_size,
                             chunk_pages, score_device, compute_dtype, group_dir))
    metrics = {}
    for subset, data in subsets.items():
        prefix = f"{subset}/" if prefixed else ""
        subset_run = {q: run[prefix + q] for q in data.qrels if prefix + q in run}
        metrics[subset] = evaluate_run(data.qrels, subset_run, k_values)
    return run, metrics


def markdown_table(results: dict[str, dict[str, float]], metrics: Sequence[str] = TABLE_METRICS) -> str:
    """``| task | metric ... |`` rows for each task in ``results`` (name -> aggregate metrics)."""
    lines = ["| task | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for task, agg in results.items():
        lines.append(f"| {task} | " + " | ".join(f"{agg[m]:.4f}" if m in agg else "-" for m in metrics) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval.retrieval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--tasks", nargs="+", required=True,
                   help="local BEIR folders, hub dataset names, MTEB task names (VidoreDocVQARetrieval), groups "
                        "vidore_v1 / vidore_v2 / vidore_v3, or a pairs JSONL (held-out split) with --page_store")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--split", default="test", help="dataset split (default: test)")
    p.add_argument("--page_store", default=None, help="page store to use as the corpus (one task only)")
    p.add_argument("--k", type=parse_k, default=list(DEFAULT_K), help="metric cutoffs (default 1,3,5,10,100)")
    p.add_argument("--depth", type=int, default=None, help="pages kept per query in the run (default: max k)")
    p.add_argument("--batch_size", type=int, default=8, help="encoder batch size")
    p.add_argument("--chunk_pages", type=int, default=256, help="pages encoded and scored per chunk")
    add_score_dtype_argument(p)
    p.add_argument("--timeout", type=float, default=1800, help="seconds a collective waits for the other ranks")
    p.add_argument("--mteb_results", type=Path, default=None,
                   help="also write each evaluated task as mteb's result JSON (TaskResult), in mteb's results layout "
                        "DIR/results/<model>/<revision>/<task>.json")
    args = p.parse_args(argv)
    if args.page_store and len(args.tasks) != 1:
        p.error("--page_store needs exactly one task")
    return args


def _load_task(spec: TaskSource, args: argparse.Namespace) -> tuple[Any, dict[str, RetrievalData]]:
    """The mteb task (a local one for BEIR folders / pairs files) and its ``{subset: data}``."""
    if spec.mteb:
        if args.page_store:
            raise InputError(f"--page_store replaces the corpus of a BEIR folder or pairs file, not of the MTEB task "
                             f"{spec.name}")
        task = get_task(spec.name, spec.source)
        return task, load_subsets(task, args.split)
    data = load_retrieval_data(spec.source, args.split, spec.name, args.page_store)
    return local_task(data, args.split), {"default": data}


def _per_query(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per-query metrics of all subsets, keyed as the run is (``<subset>/<id>`` when there are several)."""
    if len(metrics) == 1:
        return next(iter(metrics.values()))["per_query"]
    return {f"{s}/{q}": row for s, m in metrics.items() for q, row in m["per_query"].items()}


def evaluate_spec(encoder: Encoder, spec: TaskSource, args: argparse.Namespace, info: RankInfo,
                  device: torch.device) -> dict[str, Any]:
    """Evaluate one task; rank 0 writes its run, metrics.json and (``--mteb_results``) mteb's result JSON."""
    start = time.time()
    task, subsets = _load_task(spec, args)
    run, metrics = evaluate_subsets(encoder, subsets, info, args.k, args.depth, args.batch_size, args.chunk_pages,
                                    device, score_dtype(args.score_dtype, device), args.out / ".state" / spec.name)
    result = task_result(task, args.split, {s: m["aggregate"] for s, m in metrics.items()}, time.time() - start)
    summary = {"aggregate": subset_average(result), "main_score": task.metadata.main_score,
               "subsets": {s: m["aggregate"] for s, m in metrics.items()}, "per_query": _per_query(metrics)}
    if info.is_main:
        task_dir = args.out / spec.name
        task_dir.mkdir(parents=True, exist_ok=True)
        write_run(task_dir / "run.trec", run, tag=Path(args.model).name)
        write_text_atomic(task_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
        if args.mteb_results is not None:
            meta = model_meta(args.model, multi_vector=encoder.multi_vector)
            logger.info("mteb result: %s", save_task_result(result, meta, args.mteb_results))
    return summary


def run_tasks(encoder: Encoder, tasks: list[TaskSource], args: argparse.Namespace, info: RankInfo,
              device: torch.device) -> dict[str, dict[str, float]]:
    """Evaluate each task (skipping finished ones). Returns the table's rows: task (and ``task/subset`` when there
    are several subsets) -> aggregate metrics."""
    rows: dict[str, dict[str, float]] = {}
    for spec in tasks:
        done = args.out / spec.name / "metrics.json"
        summary = json.loads(done.read_text()) if done.exists() else evaluate_spec(encoder, spec, args, info, device)
        rows[spec.name] = summary["aggregate"]
        if len(summary["subsets"]) > 1:
            rows.update({f"{spec.name}/{s}": agg for s, agg in summary["subsets"].items()})
    return rows


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    info = init_distributed(args.timeout)
    device = info.device
    try:
        specs = resolve_tasks(args.tasks)
        encoder = load_encoder_from_args(args, device)
        results = run_tasks(encoder, specs, args, info, device)
    except RuntimeError as err:
        if info.world > 1:
            print(f"rank {info.rank}: distributed evaluation failed (a rank died or a collective timed out after "
                  f"{args.timeout:.0f}s): {err}", file=sys.stderr)
        raise
    if info.is_main:
        tasks = {name: results[name] for name in dict.fromkeys(spec.name for spec in specs)}
        names = sorted({m for agg in tasks.values() for m in agg})
        average = {m: sum(agg[m] for agg in tasks.values()) / len(tasks) for m in names}
        summary = {"tasks": tasks, "average": average}
        write_text_atomic(args.out / "metrics.json", json.dumps(summary, indent=2) + "\n")
        table = markdown_table({**results, "average": average})
        write_text_atomic(args.out / "results.md", table)
        print(table)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
