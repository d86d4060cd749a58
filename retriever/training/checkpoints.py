"""Training checkpoints: ``OUTPUT_DIR/checkpoint-<step>/``, written so that a kill never leaves a half one in use.

A checkpoint holds the strategy's state (model, optimizer and scheduler; DeepSpeed's own format under DeepSpeed),
``trainer_state.json`` (step, epoch, batch within the epoch) and one ``rng_state_<rank>.pt`` per rank (torch CPU and
CUDA generator states, so that dropout continues exactly). The file ``COMPLETE`` is written last, after every rank
has finished; ``latest_checkpoint`` only considers directories that have it (and logs the incomplete ones it
skips), ``load_checkpoint`` refuses one without it, ``load_encoder`` never takes a checkpoint for a model, and
rotation keeps the newest ``save_total_limit`` complete ones. A save that fails for lack of space stops training
with one line naming the checkpoint; the older complete checkpoints are intact and ``--resume_from_checkpoint
latest`` continues from the newest of them once space is freed.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from data_prep.errors import InputError, stop_on_full_disk
from retriever.model.saved import CHECKPOINT_MARKER as MARKER
from retriever.model.saved import CHECKPOINT_STATE_FILE as STATE_FILE
from retriever.model.saved import IncompleteCheckpointError
from retriever.process_group import barrier

logger = logging.getLogger(__name__)


@dataclass
class TrainerState:
    """Where training stands: optimizer steps done, and the next batch to draw."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step}"


def save_checkpoint(strategy, output_dir: str | Path, state: TrainerState, save_total_limit: int) -> Path:
    """Write a checkpoint (collective: every rank calls it) and rotate old ones."""
    path = checkpoint_path(output_dir, state.global_step)
    previous = latest_checkpoint(output_dir)
    kept = (f"it is incomplete (no {MARKER} marker) and will never be loaded; "
            + (f"the last complete checkpoint {previous} is intact; " if previous else "")
            + "free space and run the same command with --resume_from_checkpoint latest")
    with stop_on_full_disk(path, kept):
        _write_checkpoint(strategy, path, state)
    if strategy.rank == 0:
        _rotate(Path(output_dir), save_total_limit)
    barrier()
    return path


def _write_checkpoint(strategy, path: Path, state: TrainerState) -> None:
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
        (path / MARKER).write_text("ok\n")


def load_checkpoint(strategy, path: str | Path) -> TrainerState:
    """Restore strategy and RNG state from a complete checkpoint; returns the trainer state."""
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
    strategy.load_checkpoint(path)
    rng_file = path / f"rng_state_{strategy.rank}.pt"
    if rng_file.exists():
        _set_rng_state(torch.load(rng_file, weights_only=True))
    return state


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
