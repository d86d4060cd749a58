"""Training checkpoints: ``OUTPUT_DIR/checkpoint-<step>/``, written so that a kill never leaves a half one in use.

A checkpoint holds the strategy's state (model, optimizer and scheduler; DeepSpeed's own format under DeepSpeed),
``trainer_state.json`` (step, epoch, batch within the epoch) and one ``rng_state_<rank>.pt`` per rank (torch CPU and
CUDA generator states, so that dropout continues exactly), and ``run_settings.json``, the settings its weights and
optimizer state fit (base model identity, encoder settings, training mode, LoRA; see ``recipe.run_settings``): a
resume with other settings is refused with one line naming each difference, before any state is loaded. The file
``COMPLETE`` is written last, after every rank has finished; ``latest_checkpoint`` only considers directories that
have it (and logs the incomplete ones it skips), ``load_checkpoint`` refuses one without it, ``load_encoder`` never
takes a checkpoint for a model, and rotation keeps the newest ``save_total_limit`` complete ones. A save that fails for lack of space stops training
with one line naming the checkpoint; the older complete checkpoints are intact and ``--resume_from_checkpoint
latest`` continues from the newest of them once space is freed.
"""
from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from data_prep.errors import InputError, read_json_input, stop_on_full_disk
from data_prep.outputs import record_settings, settings_changes
from retriever.model.saved import CHECKPOINT_MARKER as MARKER
from retriever.model.saved import CHECKPOINT_STATE_FILE as STATE_FILE
from retriever.model.saved import IncompleteCheckpointError
from retriever.process_group import barrier
from retriever.training.strategy import load_state_file

logger = logging.getLogger(__name__)
SETTINGS_FILE = "run_settings.json"


@dataclass
class TrainerState:
    """Where training stands: optimizer steps done, and the next batch to draw."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step}"


def save_checkpoint(strategy, output_dir: str | Path, state: TrainerState, save_total_limit: int,
                    settings: Mapping[str, Any]) -> Path:
    """Write a checkpoint of a run with ``settings`` (collective: every rank calls it) and rotate old ones."""
    path = checkpoint_path(output_dir, state.global_step)
    previous = latest_checkpoint(output_dir)
    kept = (f"it is incomplete (no {MARKER} marker) and will never be loaded; "
            + (f"the last complete checkpoint {previous} is intact; " if previous else "")
            + "free space and run the same command with --resume_from_checkpoint latest")
    with stop_on_full_disk(path, kept):
        _write_checkpoint(strategy, path, state, settings)
    if strategy.rank == 0:
        _rotate(Path(output_dir), save_total_limit)
    barrier()
    return path


def _write_checkpoint(strategy, path: Path, state: TrainerState, settings: Mapping[str, Any]) -> None:
    rank = strategy.rank
    if rank == 0 and path.exists():
        shutil.rmtree(path)
    barrier()
    path.mkdir(parents=True, exist_ok=True)
    strategy.save_checkpoint(path)
    torch.save(_rng_state(), path / f"rng_state_{rank}.pt")
    barrier()
    if rank == 0:
        (path / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
        record_settings(path / SETTINGS_FILE, settings)
        (path / MARKER).write_text("ok\n")


def load_checkpoint(strategy, path: str | Path, settings: Mapping[str, Any]) -> TrainerState:
    """Restore strategy and RNG state from a complete checkpoint of a run with ``settings`` (see
    :func:`check_run_settings`); returns the trainer state."""
    path = Path(path)
    if not (path / MARKER).exists():
        raise IncompleteCheckpointError(
            f"{path} is not a complete checkpoint (no {MARKER} marker: missing, or its save was interrupted); "
            "--resume_from_checkpoint latest takes the newest complete one")
    try:
        state = TrainerState(**json.loads((path / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError) as err:
        raise InputError(f"{path / STATE_FILE}: unreadable trainer state ({err}); resume from another checkpoint") \
            from None
    check_run_settings(path, settings)
    strategy.load_checkpoint(path)
    rng_file = path / f"rng_state_{strategy.rank}.pt"
    if rng_file.exists():
        _set_rng_state(load_state_file(rng_file))
    return state


def check_run_settings(path: Path, settings: Mapping[str, Any]) -> None:
    """Refuse to resume from the checkpoint ``path`` when the run that wrote it had other ``settings`` (its
    weights and optimizer state would not fit this run's model), naming each difference; a checkpoint written
    before checkpoints recorded them is resumed with a warning."""
    record = path / SETTINGS_FILE
    if not record.exists():
        logger.warning("%s: no record of the run settings it was saved with (%s is missing); resuming it with this "
                       "run's settings", path, record.name)
        return
    changed = settings_changes(read_json_input(record, "run settings record"), settings)
    if changed:
        raise InputError(f"{path}: saved by a run with other settings than this one: {', '.join(changed)}; its "
                         "weights and optimizer state do not fit this run's model: resume with the settings it "
                         "was saved with, or start a new run (another --output_dir, or no --resume_from_checkpoint)")


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in ``output_dir``, if any."""
    complete = _complete_checkpoints(Path(output_dir))
    return complete[-1] if complete else None


def resolve_resume(arg: str | None, output_dir: str | Path) -> Path | None:
    """``--resume_from_checkpoint``: a path, or 'latest' (None when there is none yet: a fresh start)."""
    if arg is None:
        return None
    if arg == "latest":
        complete = _complete_checkpoints(Path(output_dir), report_skipped=True)
        return complete[-1] if complete else None
    return Path(arg)


def _complete_checkpoints(output_dir: Path, report_skipped: bool = False) -> list[Path]:
    numbered = [p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    for p in numbered:
        if report_skipped and not (p / MARKER).exists():
            logger.warning("skipping %s: no %s marker (its save was interrupted)", p, MARKER)
    found = [p for p in numbered if (p / MARKER).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def _rotate(output_dir: Path, keep: int) -> None:
    if keep <= 0:
        return
    for old in _complete_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
