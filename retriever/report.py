"""CLI: one page per training run: ``python -m retriever.report RUN_DIR [--metrics metrics.json] [--out DIR]``.

From what ``retriever.train`` left in ``RUN_DIR`` (``log.jsonl``, ``environment.json``, ``final/`` or the latest
checkpoint's settings, ``best/best.json``) it writes ``DIR/report.md`` (default ``RUN_DIR/report/``) with

* the training curves (``curves.png``): loss, learning rate, gradient norm and throughput per step;
* the held-out metrics over steps (``eval.png``, from ``--eval_data`` / ``--eval_steps``), the best step marked;
* the configuration: the training flags and the encoder settings;
* where it ran: devices, world size, platform and library versions of each start (or resume);
* the final evaluation table of an ``eval.retrieval`` metrics.json (``--metrics``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from data_prep.errors import InputError, MissingInputError, cli
from data_prep.outputs import write_text_atomic
from retriever.model.saved import CONFIG_FILE, TRAINING_ARGS_FILE
from retriever.model_card import read_metrics
from retriever.training.environment import ENVIRONMENT_FILE
from retriever.training.logs import read_log

__all__ = ["main", "report"]

CURVES = (("loss", "loss"), ("lr", "learning rate"), ("grad_norm", "gradient norm"),
          ("pairs_per_second", "pairs / s"))


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _settings_dir(run: Path) -> Path | None:
    """``final/``, else the latest checkpoint (a run still going or stopped early)."""
    if (run / "final" / TRAINING_ARGS_FILE).exists():
        return run / "final"
    checkpoints = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if
                         p.name.split("-")[-1].isdigit() else -1)
    return checkpoints[-1] if checkpoints else None


def _plot_curves(records: dict[int, dict[str, Any]], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [(key, label) for key, label in CURVES if any(key in r for r in records.values())]
    if not present:
        return False
    fig, axes = plt.subplots(1, len(present), figsize=(4 * len(present), 3), squeeze=False)
    for ax, (key, label) in zip(axes[0], present):
        steps = [s for s, r in records.items() if key in r]
        ax.plot(steps, [records[s][key] for s in steps], linewidth=1)
        ax.set_title(label)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_eval(records: dict[int, dict[str, Any]], best: dict[str, Any] | None, path: Path) -> list[str]:
    """Held-out metrics over steps (the best step marked); returns the table's lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in records.values() for k in r if k.startswith("eval_")})
    steps = [s for s, r in records.items() if any(k in r for k in keys)]
    if not steps:
        return []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in keys:
        ax.plot(steps, [records[s].get(key, float("nan")) for s in steps], marker="o", label=key[5:])
    if best and best.get("step") is not None:
        ax.axvline(best["step"], color="grey", linestyle="--", label=f"best (step {best['step']})")
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    lines = ["| step | " + " | ".join(k[5:] for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {s} | " + " | ".join(f"{records[s][k]:.4f}" if k in records[s] else "-" for k in keys) + " |"
              for s in steps]
    return lines


def report(run: Path, out: Path, metrics: Path | None = None) -> Path:
    """Writes ``out/report.md`` (and its PNGs) for the run at ``run``; returns its path."""
    records = read_log(run / "log.jsonl")
    if not records:
        raise InputError(f"{run}: no log.jsonl records (give the --output_dir of a retriever.train run)")
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings_dir(run)
    best = _json(run / "best" / "best.json")
    last = records[max(records)]
    lines = [f"# Training report: {run.name}", "", f"Run directory: `{run}`; {len(records)} logged steps, the last "
             f"step {max(records)} (loss {last.get('loss', float('nan')):.4f}).", ""]
    if _plot_curves(records, out / "curves.png"):
        lines += ["## Training curves", "", "![training curves](curves.png)", ""]
    table = _plot_eval(records, best, out / "eval.png")
    if table:
        best_line = f"Best: step {best['step']} (`{run / 'best'}`)." if best else "No `--save_best` checkpoint."
        lines += ["## Held-out metrics over steps", "", "![held-out metrics](eval.png)", "", *table, "", best_line, ""]
    if metrics is not None:
        lines += ["## Final evaluation", "", read_metrics(metrics), ""]
    lines += _configuration(settings) + _environment(run)
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def _configuration(settings: Path | None) -> list[str]:
    if settings is None:
        return ["## Configuration", "", "Not recorded (no final/ or checkpoint yet).", ""]
    args, encoder = _json(settings / TRAINING_ARGS_FILE), _json(settings / CONFIG_FILE)
    lines = ["## Configuration", "", f"From `{settings}`.", ""]
    if args:
        lines += ["Training flags:", "", "```json", json.dumps(args, indent=1, sort_keys=True), "```", ""]
    if encoder:
        lines += ["Encoder settings:", "", "```json", json.dumps(encoder, indent=1, sort_keys=True), "```", ""]
    return lines


def _environment(run: Path) -> list[str]:
    starts = _json(run / ENVIRONMENT_FILE) or []
    if not starts:
        return ["## Where it ran", "", "Not recorded (a run from before environment.json).", ""]
    lines = ["## Where it ran", "", "| started | from step | world size | devices | platform | versions |",
             "|---|---|---|---|---|---|"]
    for s in starts:
        versions = ", ".join(f"{k} {v}" for k, v in s.get("versions", {}).items())
        lines.append(f"| {s.get('started')} | {s.get('step')} | {s.get('world_size')} | "
                     f"{'; '.join(s.get('devices', []))} | {s.get('platform')} (Python {s.get('python')}) | "
                     f"{versions} |")
    return lines + [""]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m retriever.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="the --output_dir of a retriever.train run")
    p.add_argument("--metrics", type=Path, default=None, help="an eval.retrieval metrics.json: the final table")
    p.add_argument("--out", type=Path, default=None, help="report folder (default: RUN/report)")
    return p.parse_args(argv)


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.run.is_dir():
        raise MissingInputError(f"{args.run}: no such run directory")
    if args.metrics is not None and not args.metrics.exists():
        raise MissingInputError(f"--metrics {args.metrics} does not exist (the metrics.json eval.retrieval wrote)")
    path = report(args.run, args.out or args.run / "report", args.metrics)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
