"""CLI: Optuna hyperparameter search, each trial a real ``retriever.train`` run scored on held-out data.

``python -m retriever.search [--space FILE] --trials N --out DIR [--storage URL] [--study_name NAME]
[--metric ndcg_at_10] [--nproc_per_node K] -- <retriever.train flags>``

The training flags after ``--`` are every trial's; they must include ``--eval_data`` (the held-out task the trials
are scored on) and no ``--output_dir`` (each trial trains into ``DIR/trials/trial-<n>``). Each trial draws the flags of
the search space (:mod:`retriever.training.search_space`; without ``--space``, its default space) with Optuna's TPE
sampler (``--seed``), runs ``python -m retriever.train`` (under ``torchrun`` with ``--nproc_per_node`` > 1) and
follows its ``log.jsonl``: every held-out evaluation (``--eval_steps``) is reported to Optuna, and a trial the pruner
(``--pruner median``, the default: after 2 trials, below the median of earlier trials at the same step; or
``threshold`` with ``--prune_below``) stops is killed and marked pruned. The
trial's value is its last evaluation of ``--metric``.

The study lives in an Optuna RDB storage (default ``sqlite:///DIR/study.db``): a search killed at any point resumes
with the same command; its finished trials stay, a trial that was running is marked failed once its heartbeat is
older than ``--heartbeat`` x 2 seconds (and run again), and the search stops when ``--trials`` trials have finished
(complete or pruned; a failed trial, whose training exited with an error, takes its slot: rerun the command for
the missing ones). At the end it writes ``DIR/best_params.json`` (the best trial's value, flags and training
command), ``DIR/trials.csv`` and Optuna's optimization-history and parameter-importance plots
(``DIR/history.png``, ``DIR/importance.png``; importance needs two or more finished trials).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from data_prep.errors import InputError, cli
from data_prep.flags import positive_float, positive_int
from data_prep.outputs import write_text_atomic
from retriever.training.evaluation import LOGGED
from retriever.training.logs import read_log
from retriever.training.search_space import load_space, space_flags, suggest

__all__ = ["main", "run_trial"]

logger = logging.getLogger(__name__)
POLL_SECONDS = 0.5


class TrainingFailed(RuntimeError):
    """A trial's training exited with an error (the trial is marked failed; the search goes on)."""


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(prog="python -m retriever.search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", type=Path, default=None, help="JSON/YAML search space (default: the shipped one)")
    p.add_argument("--trials", type=positive_int, required=True, help="finished (complete or pruned) trials wanted")
    p.add_argument("--out", type=Path, required=True, help="output directory (trials, study, results)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///OUT/study.db)")
    p.add_argument("--study_name", default="retriever-search", help="study name in the storage")
    p.add_argument("--metric", default="ndcg_at_10", choices=LOGGED, help="held-out metric to maximise")
    p.add_argument("--pruner", choices=("median", "threshold", "none"), default="median",
                   help="median: stop a trial below the median of earlier trials at the same step; threshold: "
                        "below --prune_below")
    p.add_argument("--prune_below", type=float, default=None, help="threshold pruner: the lowest value kept")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--nproc_per_node", type=positive_int, default=1, help="processes per trial (torchrun when > 1)")
    p.add_argument("--heartbeat", type=positive_float, default=30.0,
                   help="seconds between a running trial's heartbeats; one silent for twice as long is failed")
    p.add_argument("--train_module", default="retriever.train", help=argparse.SUPPRESS)
    args = p.parse_args(argv[:split])
    train = argv[split + 1:]
    if "--eval_data" not in train:
        p.error("the training flags after -- need --eval_data: trials are scored on held-out data")
    if "--output_dir" in train:
        p.error("give no --output_dir after --: each trial trains into OUT/trials/trial-<n>")
    if args.pruner == "threshold" and args.prune_below is None:
        p.error("--pruner threshold needs --prune_below")
    return args, train


def _command(args: argparse.Namespace, train: list[str], values: dict[str, Any], output_dir: Path) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                str(args.nproc_per_node)] if args.nproc_per_node > 1 else [sys.executable]
    return [*launcher, "-m", args.train_module, *train, *space_flags(values), "--output_dir", str(output_dir)]


def run_trial(trial: Any, command: list[str], output_dir: Path, metric: str) -> float:
    """Runs one training, reporting its held-out evaluations to ``trial``; kills it when the pruner says so."""
    import optuna

    output_dir.mkdir(parents=True, exist_ok=True)
    key, reported, value = f"eval_{metric}", set(), None
    with open(output_dir / "train.out", "w") as stdout:
        proc = subprocess.Popen(command, stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while True:
                done = proc.poll() is not None
                for step, record in read_log(output_dir / "log.jsonl").items():
                    if key in record and step not in reported:
                        reported.add(step)
                        value = float(record[key])
                        trial.report(value, step)
                        if trial.should_prune():
                            raise optuna.TrialPruned(f"{metric} {value:.4f} at step {step}")
                if done:
                    break
                time.sleep(POLL_SECONDS)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if proc.returncode != 0:
        tail = (output_dir / "train.out").read_text(errors="replace").strip().splitlines()[-1:]
        raise TrainingFailed(f"training exited with status {proc.returncode}: {' '.join(tail)}")
    if value is None:
        raise TrainingFailed(f"training wrote no {key} to {output_dir / 'log.jsonl'}")
    return value


def _pruner(args: argparse.Namespace) -> Any:
    import optuna

    if args.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if args.pruner == "threshold":
        return optuna.pruners.ThresholdPruner(lower=args.prune_below)
    return optuna.pruners.NopPruner()


def _study(args: argparse.Namespace) -> Any:
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    url = args.storage or f"sqlite:///{(args.out / 'study.db').resolve()}"
    storage = RDBStorage(url, heartbeat_interval=int(max(1, args.heartbeat)),
                         grace_period=int(max(2, 2 * args.heartbeat)),
                         heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    return optuna.create_study(study_name=args.study_name, storage=storage, direction="maximize",
                               sampler=optuna.samplers.TPESampler(seed=args.seed), pruner=_pruner(args),
                               load_if_exists=True)


def _finished(study: Any) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _write_results(study: Any, args: argparse.Namespace, train: list[str]) -> None:
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    study.trials_dataframe().to_csv(args.out / "trials.csv", index=False)
    if not complete:
        raise InputError(f"{args.out}: no trial completed (all pruned or failed); see {args.out / 'trials.csv'} "
                         "and OUT/trials/*/train.out")
    best = study.best_trial
    write_text_atomic(args.out / "best_params.json", json.dumps({
        "value": best.value, "metric": args.metric, "trial": best.number, "params": best.params,
        "command": _command(args, train, best.params, args.out / "trials" / f"trial-{best.number}")[1:]},
        indent=2) + "\n")
    _plots(study, args.out)


def _plots(study: Any, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    plot_optimization_history(study).figure.savefig(out / "history.png", dpi=120, bbox_inches="tight")
    plt.close("all")
    try:
        plot_param_importances(study).figure.savefig(out / "importance.png", dpi=120, bbox_inches="tight")
    except (RuntimeError, ValueError) as err:  # too few finished trials, or parameters that never varied
        logger.warning("no parameter-importance plot: %s", err)
    plt.close("all")


@cli
def main(argv: list[str] | None = None) -> int:
    args, train = parse_args(argv)
    from optuna.exceptions import ExperimentalWarning

    warnings.filterwarnings("ignore", category=ExperimentalWarning)  # heartbeats and the matplotlib plots
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = load_space(args.space)
    clashes = sorted(f"--{p.flag}" for p in params if f"--{p.flag}" in train)
    if clashes:
        raise InputError(f"{', '.join(clashes)}: both fixed after -- and searched in "
                         f"{args.space or 'the default space'}; drop one")
    args.out.mkdir(parents=True, exist_ok=True)
    study = _study(args)

    def objective(trial: Any) -> float:
        values = suggest(trial, params)
        output_dir = args.out / "trials" / f"trial-{trial.number}"
        logger.info("trial %d: %s", trial.number, " ".join(space_flags(values)))
        return run_trial(trial, _command(args, train, values, output_dir), output_dir, args.metric)

    remaining = args.trials - _finished(study)
    if remaining > 0:  # a failed trial uses up its slot too: a rerun runs what is still missing
        study.optimize(objective, n_trials=remaining, catch=(TrainingFailed,))
    _write_results(study, args, train)
    print(f"search: {_finished(study)} trials finished; best {args.metric} "
          f"{study.best_value:.4f} (trial {study.best_trial.number}): {args.out / 'best_params.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
