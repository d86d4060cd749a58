"""CLI: compare evaluation results side by side, per task and metric, with a paired significance test.

``python -m eval.compare BASELINE OTHER [OTHER ...] [--metrics ndcg_at_5,ndcg_at_10] [--json FILE] [--out DIR]``

Each result is an ``eval.retrieval`` output directory (``OUT/metrics.json`` and ``OUT/<task>/metrics.json`` with
per-query metrics) or an mteb result JSON file (``TaskResult``: aggregates only). Every other result is compared with
the first on the tasks they share: both means, the difference, per-query wins / ties / losses, and the two-sided
p-value of a paired randomization test (SciPy's ``permutation_test`` on the per-query differences, sign flips of
each query's pair: exact enumeration up to 2^16 flips, else ``--resamples`` random ones with ``--seed``), the test
IR evaluation uses (Smucker et al., 2007). Results without per-query scores (mteb JSON) get means only.

Prints a markdown table; ``--out DIR`` also writes ``compare.md`` and ``compare.png`` (the means per task), and
``--json FILE`` per task and metric both means, the difference, wins / ties / losses and the p-value.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import permutation_test

from data_prep.errors import InputError, cli
from data_prep.flags import positive_int
from data_prep.outputs import write_text_atomic

__all__ = ["Comparison", "Result", "compare", "load_result", "main", "paired_p_value"]


@dataclass
class Result:
    """One evaluation: per task its aggregate metrics and (evaluator outputs) its per-query metrics."""

    name: str
    aggregate: dict[str, dict[str, float]]
    per_query: dict[str, dict[str, dict[str, float]]]


@dataclass
class Comparison:
    task: str
    metric: str
    baseline: str
    other: str
    baseline_mean: float
    other_mean: float
    difference: float
    wins: int | None
    ties: int | None
    losses: int | None
    p_value: float | None
    queries: int | None


def load_result(path: Path) -> Result:
    """An ``eval.retrieval`` output directory or an mteb result JSON file."""
    if path.is_dir():
        return _evaluator_result(path)
    if path.suffix == ".json" and path.is_file():
        return _mteb_result(path)
    raise InputError(f"{path}: neither an eval.retrieval output directory nor an mteb result JSON file")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read it as JSON ({err})") from err


def _evaluator_result(path: Path) -> Result:
    summary = path / "metrics.json"
    if not summary.exists():
        raise InputError(f"{path}: no metrics.json (give the --out directory of python -m eval.retrieval)")
    tasks = _read(summary).get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise InputError(f"{summary}: no 'tasks' (not the overall metrics.json of python -m eval.retrieval)")
    per_query = {}
    for task in tasks:
        task_file = path / task / "metrics.json"
        if task_file.exists():
            per_query[task] = _read(task_file).get("per_query", {})
    return Result(path.name, tasks, per_query)


def _mteb_result(path: Path) -> Result:
    data = _read(path)
    try:
        splits = data["scores"]
        rows = splits.get("test") or next(iter(splits.values()))
        metrics = {m for row in rows for m, v in row.items() if isinstance(v, (int, float))}
        aggregate = {m: float(np.mean([row[m] for row in rows if m in row])) for m in metrics}
        return Result(path.stem, {data["task_name"]: aggregate}, {})
    except (KeyError, TypeError, StopIteration, AttributeError) as err:
        raise InputError(f"{path}: not an mteb result JSON (task_name, scores per split; {err!r})") from err


def paired_p_value(a: np.ndarray, b: np.ndarray, resamples: int = 100_000, seed: int = 0) -> float:
    """Two-sided p-value of the paired randomization test of ``mean(b - a)`` (each query's pair swapped or not)."""
    if len(a) < 2 or np.all(a == b):
        return 1.0
    test = permutation_test((a, b), lambda x, y, axis: np.mean(y - x, axis=axis), permutation_type="samples",
                            vectorized=True, n_resamples=resamples, alternative="two-sided", random_state=seed)
    return float(test.pvalue)


def compare(results: list[Result], metrics: list[str], resamples: int = 100_000, seed: int = 0) -> list[Comparison]:
    """Every result after the first against the first, on their shared tasks."""
    baseline, rows = results[0], []
    for other in results[1:]:
        shared = [t for t in baseline.aggregate if t in other.aggregate]
        if not shared:
            raise InputError(f"{baseline.name} and {other.name} share no task (tasks: "
                             f"{', '.join(baseline.aggregate)} / {', '.join(other.aggregate)})")
        for task in shared:
            for metric in metrics:
                rows.append(_compare_one(baseline, other, task, metric, resamples, seed))
    return rows


def _compare_one(baseline: Result, other: Result, task: str, metric: str, resamples: int, seed: int) -> Comparison:
    for result in (baseline, other):
        if metric not in result.aggregate[task]:
            raise InputError(f"--metrics {metric}: {result.name} has no {metric} for task {task} (it has: "
                             f"{', '.join(sorted(result.aggregate[task]))})")
    mean_a, mean_b = baseline.aggregate[task][metric], other.aggregate[task][metric]
    qa, qb = baseline.per_query.get(task, {}), other.per_query.get(task, {})
    queries = sorted(set(qa) & set(qb))
    paired = [(qa[q][metric], qb[q][metric]) for q in queries if metric in qa[q] and metric in qb[q]]
    if not paired:
        return Comparison(task, metric, baseline.name, other.name, mean_a, mean_b, mean_b - mean_a,
                          None, None, None, None, None)
    a, b = np.array([p[0] for p in paired]), np.array([p[1] for p in paired])
    return Comparison(task, metric, baseline.name, other.name, mean_a, mean_b, mean_b - mean_a,
                      int((b > a).sum()), int((b == a).sum()), int((b < a).sum()),
                      paired_p_value(a, b, resamples, seed), len(paired))


def markdown(rows: list[Comparison]) -> str:
    lines = ["| task | metric | baseline | other | baseline mean | other mean | difference | wins / ties / losses | "
             "p (paired randomization) |", "|---" * 9 + "|"]
    for r in rows:
        wtl = "-" if r.wins is None else f"{r.wins} / {r.ties} / {r.losses}"
        p = "- (no per-query scores)" if r.p_value is None else f"{r.p_value:.3g}"
        lines.append(f"| {r.task} | {r.metric} | {r.baseline} | {r.other} | {r.baseline_mean:.4f} | "
                     f"{r.other_mean:.4f} | {r.difference:+.4f} | {wtl} | {p} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[Comparison], path: Path) -> None:
    """Grouped bars: per task and metric, the baseline's mean and each other result's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys((r.task, r.metric) for r in rows))
    systems = [rows[0].baseline, *dict.fromkeys(r.other for r in rows)]
    means = {(r.task, r.metric, r.baseline): r.baseline_mean for r in rows}
    means.update({(r.task, r.metric, r.other): r.other_mean for r in rows})
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(keys) * len(systems)), 4))
    width = 0.8 / len(systems)
    for i, system in enumerate(systems):
        ax.bar([k + i * width for k in range(len(keys))], [means.get((t, m, system), 0.0) for t, m in keys],
               width, label=system)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))], [f"{t}\n{m}" for t, m in keys], fontsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path, help="the baseline first, then the results compared with it")
    p.add_argument("--metrics", default="ndcg_at_5,ndcg_at_10", help="comma-separated metric names")
    p.add_argument("--resamples", type=positive_int, default=100_000,
                   help="random sign flips when exact enumeration (up to 2^16) is too large")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sign flips")
    p.add_argument("--json", type=Path, default=None, help="also write the comparison as JSON")
    p.add_argument("--out", type=Path, default=None, help="also write compare.md and compare.png here")
    args = p.parse_args(argv)
    if len(args.results) < 2:
        p.error("give at least two results: the baseline, then one or more to compare with it")
    return args


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    rows = compare([load_result(path) for path in args.results], metrics, args.resamples, args.seed)
    table = markdown(rows)
    print(table, end="")
    if args.json is not None:
        write_text_atomic(args.json, json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out / "compare.md", table)
        plot(rows, args.out / "compare.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
