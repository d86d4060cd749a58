"""CLI: native sharded retrieval evaluation (ViDoRe / BEIR layout) of a checkpoint, single process or torchrun.

Per task it writes ``<out>/<task>/metrics.json`` (aggregate, per-subset and per-query metrics),
``<out>/<task>/run.trec`` (top ``--depth`` pages per query), and overall ``<out>/metrics.json`` (per task and their
average) and ``<out>/results.md`` (a short markdown table, one row per task and per language subset). A rerun
reuses a finished task whose metrics.json was made with the same model and flags (its ``made_with``), and an
interrupted task resumes from its last scored chunk when its state was made by the same model on the same data;
otherwise the task is evaluated again, with a warning naming what changed. See eval.engine for the sharding and
resume design. This module is only the command line: tasks are loaded by :mod:`eval.tasks` and evaluated by
:mod:`eval.evaluate` (as training's evaluation does), the table comes from :mod:`eval.report`.

Multi-vector models can be scored through a compressed index (``--pool_factor``, ``--quantize``, ``--candidates``,
``--rerank_depth``; :mod:`retriever.index`), and ``--compare SPEC`` scores a list of such configurations on one
encoding of each task and writes ``<out>/<task>/compression.{json,md,png}`` instead (:mod:`eval.compression`).

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
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from data_prep.errors import InputError, cli
from data_prep.flags import positive_float, positive_int
from data_prep.outputs import check_outputs, flag_paths, settings_changes, write_text_atomic
from eval.compression import CachedEncoder, compare_task, read_spec
from eval.datasets import TaskSource, resolve_tasks
from eval.engine import Encoder, ScoringSettings
from eval.evaluate import evaluate_subsets
from eval.metrics import DEFAULT_K, parse_k
from eval.mteb_tasks import save_task_result, subset_average, task_result
from eval.mteb_wrapper import model_meta
from eval.report import markdown_table
from eval.tasks import load_task
from eval.trec import write_run
from retriever.index import IndexSettings, add_index_arguments, check_index_settings, index_settings
from retriever.model.saved import add_model_arguments, check_trained_dim, checkpoint_inputs, load_encoder_from_args
from retriever.process_group import RankInfo, joined_process_group
from retriever.scoring import add_score_dtype_argument, score_dtype

__all__ = ["main"]

logger = logging.getLogger(__name__)


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
    p.add_argument("--depth", type=positive_int, default=None,
                   help="pages kept per query in the run (default and least: the largest k)")
    p.add_argument("--batch_size", type=positive_int, default=8, help="encoder batch size")
    p.add_argument("--chunk_pages", type=positive_int, default=256, help="pages encoded and scored per chunk")
    add_score_dtype_argument(p)
    p.add_argument("--timeout", type=positive_float, default=1800,
                   help="seconds a collective waits for the other ranks")
    add_index_arguments(p)
    p.add_argument("--compare", type=Path, default=None, metavar="SPEC",
                   help="JSON/YAML list of index configurations (index flag names as keys) to score on one encoding "
                        "of each task: writes OUT/<task>/compression.{json,md,png} (multi-vector models, one process)")
    p.add_argument("--mteb_results", type=Path, default=None,
                   help="also write each evaluated task as mteb's result JSON (TaskResult), in mteb's results layout "
                        "DIR/results/<model>/<revision>/<task>.json")
    args = p.parse_args(argv)
    if args.page_store and len(args.tasks) != 1:
        p.error("--page_store needs exactly one task")
    if args.depth is not None and args.depth < max(args.k):
        p.error(f"--depth {args.depth} is below the largest --k {max(args.k)}: metrics at that cutoff would count "
                "only the kept pages")
    return args


def check_paths(args: argparse.Namespace, specs: list[TaskSource]) -> None:
    """Refuse, before anything is written, an output directory that is, lies in or contains an input (the model,
    a local task, the page store) or cannot be written."""
    tasks = [spec.source for spec in specs if spec.source is not None and Path(spec.source).exists()]
    inputs = {**checkpoint_inputs("--model", args.model), **flag_paths("--tasks", tasks),
              "--page_store": args.page_store}
    check_outputs({"--out": args.out, "--mteb_results": args.mteb_results}, inputs,
                  directories=("--out", "--mteb_results"))


def _per_query(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per-query metrics of all subsets, keyed as the run is (``<subset>/<id>`` when there are several)."""
    if len(metrics) == 1:
        return next(iter(metrics.values()))["per_query"]
    return {f"{s}/{q}": row for s, m in metrics.items() for q, row in m["per_query"].items()}


def evaluate_spec(encoder: Encoder, spec: TaskSource, args: argparse.Namespace, info: RankInfo,
                  settings: ScoringSettings) -> dict[str, Any]:
    """Evaluate one task (resumable from ``OUT/.state/<task>``); rank 0 writes its run, metrics.json and
    (``--mteb_results``) mteb's result JSON."""
    start = time.time()
    task, subsets = load_task(spec, args.split, args.page_store)
    run, metrics = evaluate_subsets(encoder, subsets, info, args.k, args.depth,
                                    replace(settings, state_dir=args.out / ".state" / spec.name))
    result = task_result(task, args.split, {s: m["aggregate"] for s, m in metrics.items()}, time.time() - start)
    summary = {"aggregate": subset_average(result), "main_score": task.metadata.main_score,
               "subsets": {s: m["aggregate"] for s, m in metrics.items()}, "per_query": _per_query(metrics),
               "made_with": made_with(encoder, spec, args)}
    if info.is_main:
        task_dir = args.out / spec.name
        task_dir.mkdir(parents=True, exist_ok=True)
        write_run(task_dir / "run.trec", run, tag=Path(args.model).name)
        write_text_atomic(task_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
        if args.mteb_results is not None:
            meta = model_meta(args.model, multi_vector=encoder.multi_vector)
            logger.info("mteb result: %s", save_task_result(result, meta, args.mteb_results))
    return summary


def made_with(encoder: Encoder, spec: TaskSource, args: argparse.Namespace) -> dict[str, Any]:
    """What decides a task's metrics besides the code: the model's fingerprint, the task's source and the flags
    that change the run (recorded in its metrics.json as ``made_with``)."""
    index = index_settings(args)
    return {**encoder.fingerprint, "task": spec.source, "--split": args.split, "--page_store": args.page_store,
            "--k": args.k, "--depth": args.depth, "--score_dtype": args.score_dtype,
            **({} if index.exact else {"index": index.to_dict()})}


def finished_summary(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics.json of a task finished by an earlier run made with ``settings`` (see :func:`made_with`); None
    when there is none, or when it was made otherwise (a warning names what changed: the task is evaluated
    again). One written before metrics.json recorded ``made_with`` is reused with a warning."""
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    if "made_with" not in summary:
        logger.warning("%s: no record of the model and flags it was made with; reusing it", path)
    changed = settings_changes(summary.get("made_with", {}), settings)
    if changed:
        logger.warning("%s: made by another evaluation than this one: %s; evaluating the task again", path,
                       ", ".join(changed))
        return None
    return summary


def run_tasks(encoder: Encoder, tasks: list[TaskSource], args: argparse.Namespace, info: RankInfo,
              settings: ScoringSettings) -> dict[str, dict[str, float]]:
    """Evaluate each task (reusing those finished with the same model and flags). Returns the table's rows: task
    (and ``task/subset`` when there are several subsets) -> aggregate metrics."""
    rows: dict[str, dict[str, float]] = {}
    for spec in tasks:
        summary = finished_summary(args.out / spec.name / "metrics.json", made_with(encoder, spec, args)) \
            or evaluate_spec(encoder, spec, args, info, settings)
        rows[spec.name] = summary["aggregate"]
        if len(summary["subsets"]) > 1:
            rows.update({f"{spec.name}/{s}": agg for s, agg in summary["subsets"].items()})
    return rows


def compare_tasks(encoder: Encoder, tasks: list[TaskSource], args: argparse.Namespace,
                  settings: ScoringSettings) -> None:
    """``--compare``: every configuration of the spec on each task (one encoding per task); prints each table."""
    if not encoder.multi_vector:
        raise InputError(f"--compare: {args.model} is a dense model (one vector per page); index compression applies "
                         "to multi-vector models")
    configs = read_spec(args.compare)
    depth = max(args.depth or 0, *args.k, 100)
    for config in configs:
        check_index_settings(config.settings, multi_vector=True, depth=depth, model=args.model)
        check_trained_dim(config.dim, args.model, encoder.config.matryoshka_dims)
    for spec in tasks:
        _, subsets = load_task(spec, args.split, args.page_store)
        compare_task(CachedEncoder(encoder), subsets, configs, args.k, depth, settings, args.out / spec.name)
        print(f"{spec.name}:\n" + (args.out / spec.name / "compression.md").read_text())


def write_summary(out: Path, specs: list[TaskSource], results: dict[str, dict[str, float]]) -> None:
    """``OUT/metrics.json`` (per task and their average) and ``OUT/results.md`` (the table, also printed)."""
    tasks = {name: results[name] for name in dict.fromkeys(spec.name for spec in specs)}
    names = sorted({m for agg in tasks.values() for m in agg})
    average = {m: sum(agg[m] for agg in tasks.values()) / len(tasks) for m in names}
    write_text_atomic(out / "metrics.json", json.dumps({"tasks": tasks, "average": average}, indent=2) + "\n")
    table = markdown_table({**results, "average": average})
    write_text_atomic(out / "results.md", table)
    print(table)


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with joined_process_group(timedelta(seconds=args.timeout)) as info:
        try:
            specs = resolve_tasks(args.tasks)
            check_paths(args, specs)
            encoder = load_encoder_from_args(args, info.device)
            settings = ScoringSettings(args.batch_size, args.chunk_pages, info.device,
                                       score_dtype(args.score_dtype, info.device), index=index_settings(args))
            if args.compare is not None:
                compare_tasks(encoder, specs, args, replace(settings, index=IndexSettings()))
                return 0
            check_index_settings(settings.index, multi_vector=encoder.multi_vector,
                                 depth=args.depth or max(args.k), model=args.model)
            results = run_tasks(encoder, specs, args, info, settings)
        except RuntimeError as err:
            if info.world > 1:
                print(f"rank {info.rank}: distributed evaluation failed (a rank died or a collective timed out "
                      f"after {args.timeout:.0f}s): {err}", file=sys.stderr)
            raise
        if info.is_main:
            write_summary(args.out, specs, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
