"""Training checkpoints: ``OUTPUT_DIR/checkpoint-<step>/``, written so that a kill never leaves a half one in use.

A checkpoint holds the backend's state (model, optimizer and scheduler; DeepSpeed's own format under DeepSpeed),
``trainer_state.json`` (step, epoch, batch within the epoch) and one ``rng_state_<rank>.pt`` per rank (torch CPU and
CUDA generator states, so that dropout continues exactly). The file ``COMPLETE`` is written last, after every rank
has finished; ``latest_checkpoint`` only considers directories that have it, and rotation keeps the newest
``save_total_limit`` complete ones.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    """Where training stands: optimizer steps done, and the next batch to draw."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step}"


def save_checkpoint(backend, output_dir: str | Path, state: TrainerState, save_total_limit: int) -> Path:
    """Write a checkpoint (collective: every rank calls it) and rotate old ones."""
    path = checkpoint_path(output_dir, state.global_step)
    rank = backend.rank
    if rank == 0 and path.exists():
        shutil.rmtree(path)
    _barrier()
    path.mkdir(parents=True, exist_ok=True)
    backend.save_checkpoint(path)
    torch.save(_rng_state(), path / f"rng_state_{rank}.pt")
    _barrier()
    if rank == 0:
        (path / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
        (path / MARKER).write_text("ok\n")
        _rotate(Path(output_dir), save_total_limit)
    _barrier()
    return path


def load_checkpoint(backend, path: str | Path) -> TrainerState:
    """Restore backend and RNG state from a complete checkpoint; returns the trainer state."""
    path = Path(path)
    if not (path / MARKER).exists():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} file)")
    backend.load_checkpoint(path)
    rng_file = path / f"rng_state_{backend.rank}.pt"
    if rng_file.exists():
        _set_rng_state(torch.load(rng_file, weights_only=True))
    return TrainerState(**json.loads((path / STATE_FILE).read_text()))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in ``output_dir``, if any."""
    complete = _complete_checkpoints(Path(output_dir))
    return complete[-1] if complete else None


def resolve_resume(arg: str | None, output_dir: str | Path) -> Path | None:
    """``--resume_from_checkpoint``: a path, or 'latest' (None when there is none yet: a fresh start)."""
    if arg is None:
        return None
    if arg == "latest":
        return latest_checkpoint(output_dir)
    return Path(arg)


def _complete_checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in output_dir.glob("checkpoint-*") if (p / MARKER).exists() and p.name.split("-")[-1].isdigit()]
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


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
