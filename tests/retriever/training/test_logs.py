"""retriever.training.logs: a run resumed from checkpoint-N leaves log.jsonl with each step once, in order."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from retriever.training.logs import TrainLog, read_log


def _steps_on_disk(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def _killed_run(out: Path) -> Path:
    """The log of a run killed after step 5, mid-way through writing step 6 (its checkpoint-3 survived)."""
    out.mkdir()
    path = out / "log.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    return path


def _resume(out: Path, start_step: int, enabled: bool = True) -> TrainLog:
    return TrainLog(out, enabled, [], None, {}, start_step=start_step)


def test_resume_drops_the_steps_trained_again(tmp_path):
    path = _killed_run(tmp_path / "run")
    log = _resume(tmp_path / "run", 3)
    assert _steps_on_disk(path) == [1, 2, 3]  # 4 and 5 are trained again, the torn 6 is gone
    for step in (4, 5, 6):
        log.log(step, {"loss": 0.5})
    assert _steps_on_disk(path) == [1, 2, 3, 4, 5, 6]
    assert list(read_log(path)) == [1, 2, 3, 4, 5, 6] and read_log(path)[4]["loss"] == 0.5
    assert read_log(path)[3]["loss"] == 1.0 / 3  # the resumed step keeps its one record


def test_a_log_with_repeated_steps_keeps_the_last_record_of_each(tmp_path):
    """A log written by an older version, with the steps after checkpoint-2 logged twice."""
    (tmp_path / "run").mkdir()
    path = tmp_path / "run" / "log.jsonl"
    records = [(1, 0.9), (2, 0.8), (3, 0.7), (2, 0.6), (3, 0.5)]
    path.write_text("".join(json.dumps({"step": s, "loss": v}) + "\n" for s, v in records))
    assert read_log(path) == {1: {"step": 1, "loss": 0.9}, 2: {"step": 2, "loss": 0.6}, 3: {"step": 3, "loss": 0.5}}
    _resume(tmp_path / "run", 2)
    assert path.read_text() == '{"step": 1, "loss": 0.9}\n{"step": 2, "loss": 0.6}\n'


def test_a_fresh_run_starts_an_empty_log_and_other_ranks_touch_nothing(tmp_path):
    path = _killed_run(tmp_path / "run")
    before = path.read_text()
    _resume(tmp_path / "run", 0, enabled=False)
    assert path.read_text() == before
    _resume(tmp_path / "run", 0)
    assert path.read_text() == "" and read_log(path) == {}
    assert read_log(tmp_path / "missing.jsonl") == {}


def test_tensorboard_shows_each_step_once_after_a_resume(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = TrainLog(tmp_path, True, ["tensorboard"], None, {}, start_step=0)
    for step in range(1, 6):
        first.log(step, {"loss": 1.0})
    first.tensorboard.close()  # killed after step 5; its last checkpoint is checkpoint-3
    resumed = TrainLog(tmp_path, True, ["tensorboard"], None, {}, start_step=3)
    for step in (4, 5, 6):
        resumed.log(step, {"loss": 0.5})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "runs"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 0.5),
                                                                         (5, 0.5), (6, 0.5)]
