"""The markdown results table: what ``python -m eval.retrieval`` prints and writes as results.md, and what an
exported checkpoint's model card (:mod:`retriever.model_card`) shows of an evaluation's metrics.json.

One row per task (name -> aggregate metrics), one column per metric, four decimals; a metric a task lacks is ``-``.
"""
from __future__ import annotations

from collections.abc import Sequence

__all__ = ["TABLE_METRICS", "markdown_table"]

TABLE_METRICS = ("main_score", "ndcg_at_5", "ndcg_at_10", "recall_at_10", "mrr_at_10")


def markdown_table(results: dict[str, dict[str, float]], metrics: Sequence[str] = TABLE_METRICS) -> str:
    """``| task | metric ... |`` rows for each task in ``results`` (name -> aggregate metrics)."""
    lines = ["| task | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for task, agg in results.items():
        lines.append(f"| {task} | " + " | ".join(f"{agg[m]:.4f}" if m in agg else "-" for m in metrics) + " |")
    return "\n".join(lines) + "\n"
