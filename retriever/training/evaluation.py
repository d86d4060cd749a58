"""Evaluation during training: the native sharded evaluator (``eval.evaluate.evaluate_subsets``) inside the job.

Every ``--eval_steps`` optimizer steps (and after the last one) every rank evaluates the encoder on
``--eval_data``: a held-out pairs JSONL (its queries and positives are the task, ``--eval_page_store`` or the first
``--page_store`` the corpus) or any task ``python -m eval.retrieval`` accepts (BEIR/ViDoRe folder, hub name, MTEB
task name; the metrics of an MTEB task's language subsets are averaged), loaded by the CLI's own
``eval.tasks.load_task``. Ranks encode their shards of the queries and the corpus and merge their top-k with
collectives, so all ranks take part and return the same numbers; under DeepSpeed ZeRO-3 the parameters are gathered
and the partitioning hooks are off while it runs (``Strategy.inference_parameters``), so uneven shards cannot
desynchronise the ranks (the encoder's own ``encode_*`` switch it to eval mode and back). The metrics (nDCG@5/10, recall@5/10, MRR@10) go to the training
log as ``eval_<metric>``.

``--save_best`` keeps the encoder with the best ``--metric_for_best`` so far in ``OUTPUT_DIR/best`` (in the same
directory format as ``final``), with ``best.json`` (step and metrics) beside it; a resumed run reads ``best.json``
and only replaces the checkpoint with a better one.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from data_prep.errors import InputError, stop_on_full_disk
from eval.datasets import RetrievalData, resolve_tasks
from eval.engine import ScoringSettings
from eval.evaluate import evaluate_subsets
from eval.tasks import load_task
from retriever.model.encoder import RetrieverEncoder
from retriever.model.saved import save_encoder
from retriever.process_group import RankInfo, barrier
from retriever.training.strategy import Strategy

logger = logging.getLogger(__name__)
K_VALUES = (5, 10)
METRICS = tuple(f"{m}_at_{k}" for m in ("ndcg", "recall", "mrr", "map", "precision", "hit_rate") for k in K_VALUES)
LOGGED = ("ndcg_at_5", "ndcg_at_10", "recall_at_5", "recall_at_10", "mrr_at_10")
BEST_FILE = "best.json"


def load_eval_data(eval_data: str, split: str, page_store: str | None) -> dict[str, RetrievalData]:
    """The evaluation task named by ``--eval_data`` as ``{subset: data}`` (several for an MTEB task with language
    subsets; one task only: a group such as vidore_v1 is refused)."""
    tasks = resolve_tasks([eval_data])
    if len(tasks) != 1:
        raise InputError(f"--eval_data {eval_data} names {len(tasks)} tasks; evaluation during training takes one")
    _, subsets = load_task(tasks[0], split, page_store, "--eval_page_store")
    return subsets


class TrainingEvaluation:
    """Runs the evaluator on schedule, logs its metrics and keeps the best encoder (module docstring)."""

    def __init__(self, data: dict[str, RetrievalData], env: RankInfo, output_dir: str | Path, every: int,
                 batch_size: int, metric: str, save_best: bool):
        if metric not in METRICS:
            raise InputError(f"--metric_for_best {metric}: choose one of {', '.join(METRICS)}")
        self.data, self.env, self.every = data, env, every
        self.settings = ScoringSettings(batch_size=batch_size, device=env.device)
        self.metric, self.save_best = metric, save_best
        self.best_dir = Path(output_dir) / "best"
        record = self.best_dir / BEST_FILE
        self.best: float | None = json.loads(record.read_text())["value"] if record.exists() else None

    def due(self, step: int, last_step: int) -> bool:
        return step == last_step or (self.every > 0 and step % self.every == 0)

    def run(self, step: int, encoder: RetrieverEncoder, strategy: Strategy) -> dict[str, float]:
        """Evaluate on every rank (collective); save the best encoder when asked. Returns ``eval_*`` metrics."""
        with strategy.inference_parameters(), torch.no_grad():
            _, metrics = evaluate_subsets(encoder, self.data, self.env, K_VALUES, settings=self.settings)
            aggregate = {name: sum(m["aggregate"][name] for m in metrics.values()) / len(metrics) for name in METRICS}
            improved = self.best is None or aggregate[self.metric] > self.best
            if self.save_best and improved:
                self._save(step, encoder, aggregate)
        if improved:
            self.best = aggregate[self.metric]
        return {f"eval_{name}": aggregate[name] for name in dict.fromkeys(LOGGED + (self.metric,))}

    def _save(self, step: int, encoder: RetrieverEncoder, aggregate: dict[str, Any]) -> None:
        if self.env.is_main:
            staging = self.best_dir.with_name("best.tmp")
            shutil.rmtree(staging, ignore_errors=True)
            with stop_on_full_disk(staging, f"the previous best encoder in {self.best_dir} is intact"):
                save_encoder(encoder, staging)
            record = {"step": step, "metric": self.metric, "value": aggregate[self.metric], "metrics": aggregate}
            (staging / BEST_FILE).write_text(json.dumps(record, indent=2) + "\n")
            shutil.rmtree(self.best_dir, ignore_errors=True)
            staging.rename(self.best_dir)  # a kill leaves the previous best or the new one, never half of one
            logger.info("step %d: new best %s = %.4f, saved to %s", step, self.metric, aggregate[self.metric],
                        self.best_dir)
        barrier()
