"""Where training metrics go: ``log.jsonl`` (always), TensorBoard, W&B (when installed and asked), ``loss.png``.

Evaluation metrics (``eval_*`` keys, see ``evaluation.py``) share the step's record; TensorBoard and W&B show them
under ``eval/`` and ``loss.png`` gets a second panel with held-out nDCG@10 and recall@10.

Only rank 0 writes. ``log.jsonl`` has one record per logged optimizer step (loss, lr, grad norm, pairs/s, and a
digest of the step's page ids), each step once, in order. A run that starts at step N (resumed from checkpoint-N;
N = 0 for a fresh run) first drops the records of steps after N, which an interrupted run wrote and which are
trained again, and a last line torn by a kill, then appends; so a resumed run's log has the same steps as an
uninterrupted run's and can be compared with it record by record. TensorBoard events after step N are purged the
same way (``purge_step``); W&B keeps what it was sent.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from data_prep.outputs import write_text_atomic

logger = logging.getLogger(__name__)


class TrainLog:
    """Per-step metrics sink for rank 0 (a no-op on other ranks) of a run that starts after ``start_step``."""

    def __init__(self, output_dir: str | Path, enabled: bool, report_to: list[str], run_name: str | None,
                 config: dict[str, Any], start_step: int):
        self.enabled = enabled
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / "log.jsonl"
        self.tensorboard = None
        self.wandb = None
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        truncate_log(self.path, start_step)
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=str(self.output_dir / "runs"), purge_step=start_step + 1)
        if "wandb" in report_to:
            self.wandb = _start_wandb(run_name, config)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\n")
        scalars = {_tag(k): v for k, v in metrics.items() if isinstance(v, (int, float))}
        if self.tensorboard is not None:
            for key, value in scalars.items():
                self.tensorboard.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
        plot_loss(self.path, self.output_dir / "loss.png")


def _tag(key: str) -> str:
    """TensorBoard/W&B name: ``eval_ndcg_at_10`` -> ``eval/ndcg_at_10``, anything else -> ``train/<key>``."""
    return f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"


def read_log(path: str | Path) -> dict[int, dict[str, Any]]:
    """The records of a ``log.jsonl`` by step, in step order (a last line torn by a kill is left out; in a log
    written before steps were kept once, the last record of a step wins)."""
    path = Path(path)
    lines = path.read_text().split("\n") if path.exists() else []
    records = (json.loads(line) for line in lines[:-1] if line.strip())  # after the last newline: a torn line
    return dict(sorted({record["step"]: record for record in records}.items()))


def truncate_log(path: Path, step: int) -> None:
    """Keep one record of each step up to ``step`` in the ``log.jsonl`` at ``path``, dropping later steps."""
    if path.exists():
        kept = [record for number, record in read_log(path).items() if number <= step]
        write_text_atomic(path, "".join(json.dumps(record) + "\n" for record in kept))


def plot_loss(log_path: str | Path, out: str | Path) -> None:
    """Draw the loss curve of a ``log.jsonl`` to a PNG."""
    records = read_log(log_path)
    if not records:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(records)
    evaluated = [s for s in steps if "eval_ndcg_at_10" in records[s]]
    fig, axes = plt.subplots(1, 2 if evaluated else 1, figsize=(11 if evaluated else 6, 3.5), dpi=100, squeeze=False)
    ax = axes[0][0]
    ax.plot(steps, [records[s]["loss"] for s in steps], linewidth=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("contrastive loss")
    ax.grid(alpha=0.3)
    if evaluated:
        ax = axes[0][1]
        for name in ("eval_ndcg_at_10", "eval_recall_at_10"):
            ax.plot(evaluated, [records[s][name] for s in evaluated], marker="o", linewidth=1, label=name[5:])
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("held-out metric")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _start_wandb(run_name: str | None, config: dict[str, Any]):
    try:
        import wandb
    except ImportError:
        logger.warning("--report_to wandb: wandb is not installed (pip install wandb); logging to W&B is off")
        return None
    wandb.init(name=run_name, config=config)
    return wandb
