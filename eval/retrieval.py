"""CLI: native sharded retrieval evaluation (ViDoRe / BEIR layout) of a checkpoint, single process or torchrun.

Per task it writes ``<out>/<task>/metrics.json`` (aggregate and per-query metrics), ``<out>/<task>/run.trec``
(top ``--depth`` pages per query), and overall ``<out>/metrics.json`` (per task and their average) and
``<out>/results.md`` (a short markdown table). Finished tasks are skipped on rerun; an interrupted task resumes
from its last scored chunk. See eval.engine for the sharding design.

Example: ``torchrun --nproc_per_node 2 -m eval.retrieval --model ckpt --tasks vidore_v1 --out results/``
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from data_prep.errors import cli
from data_prep.outputs import write_text_atomic
from eval.datasets import RetrievalData, load_retrieval_data, resolve_tasks
from eval.engine import Encoder, encode_sharded_queries, init_distributed, score_shard
from eval.metrics import DEFAULT_K, evaluate_run
from eval.score_run import parse_k
from eval.trec import Run, write_run
from retriever.model.saved import add_model_arguments, load_encoder_from_args
from retriever.process_group import RankInfo

__all__ = ["evaluate_task", "main", "markdown_table"]

logger = logging.getLogger(__name__)
TABLE_METRICS = ("ndcg_at_5", "ndcg_at_10", "recall_at_10", "mrr_at_10")


def evaluate_task(encoder: Encoder, data: RetrievalData, info: RankInfo, k_values: Sequence[int] = DEFAULT_K,
                  depth: int | None = None, batch_size: int = 8, chunk_pages: int = 256,
                  score_device: str | torch.device = "cpu", compute_dtype: torch.dtype | None = None,
                  state_dir: Path | None = None) -> tuple[Run, dict[str, Any]]:
    """Encode, score and rank one task; returns the run (top ``depth`` pages per query) and its metrics.

    Only queries that have qrels are encoded (the others cannot be scored). Every rank returns the same values.
    """
    depth = depth or max(k_values)
    qids = [q for q in data.queries if q in data.qrels]
    query_emb = encode_sharded_queries(encoder, [data.queries[q] for q in qids], batch_size, info)
    top = score_shard(encoder, query_emb, len(data.corpus_ids), data.load_images, data.corpus_ids, depth, info,
                      batch_size, chunk_pages, score_device, compute_dtype, state_dir)
    run = {qid: {data.corpus_ids[pos]: score for pos, score in hits} for qid, hits in zip(qids, top)}
    return run, evaluate_run(data.qrels, run, k_values)


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
    p.add_argument("--timeout", type=float, default=1800, help="seconds a collective waits for the other ranks")
    args = p.parse_args(argv)
    if args.page_store and len(args.tasks) != 1:
        p.error("--page_store needs exactly one task")
    return args


def run_tasks(encoder: Encoder, tasks: list[tuple[str, str]], args: argparse.Namespace, info: RankInfo,
              device: torch.device) -> dict[str, dict[str, float]]:
    """Evaluate each task (skipping finished ones); rank 0 writes files. Returns task -> aggregate metrics."""
    results: dict[str, dict[str, float]] = {}
    for name, source in tasks:
        task_dir = args.out / name
        if (task_dir / "metrics.json").exists():
            results[name] = json.loads((task_dir / "metrics.json").read_text())["aggregate"]
            continue
        data = load_retrieval_data(source, args.split, name, args.page_store)
        compute_dtype = torch.bfloat16 if device.type == "cuda" else None
        run, metrics = evaluate_task(encoder, data, info, args.k, args.depth, args.batch_size, args.chunk_pages,
                                     device, compute_dtype, args.out / ".state" / name)
        if info.is_main:
            task_dir.mkdir(parents=True, exist_ok=True)
            write_run(task_dir / "run.trec", run, tag=Path(args.model).name)
            write_text_atomic(task_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        results[name] = metrics["aggregate"]
    return results


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    info = init_distributed(args.timeout)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        encoder = load_encoder_from_args(args, device)
        results = run_tasks(encoder, resolve_tasks(args.tasks), args, info, device)
    except RuntimeError as err:
        if info.world > 1:
            print(f"rank {info.rank}: distributed evaluation failed (a rank died or a collective timed out after "
                  f"{args.timeout:.0f}s): {err}", file=sys.stderr)
        raise
    if info.is_main:
        names = sorted({m for agg in results.values() for m in agg})
        average = {m: sum(agg[m] for agg in results.values()) / len(results) for m in names}
        summary = {"tasks": results, "average": average}
        write_text_atomic(args.out / "metrics.json", json.dumps(summary, indent=2) + "\n")
        table = markdown_table({**results, "average": average})
        write_text_atomic(args.out / "results.md", table)
        print(table)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
