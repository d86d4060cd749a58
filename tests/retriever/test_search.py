"""retriever.search: Optuna trials running the trainer, pruning through the log's evaluations, resuming after kill -9
with finished trials intact, best_params.json / trials.csv / plots; bad spaces are one line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retriever.search import main
from tests.helpers.cli import one_error_line
from tests.helpers.paths import REPO_ROOT
from tests.helpers.toy_retrieval import make_beir
from tests.helpers.training_runs import train_args

optuna = pytest.importorskip("optuna")

FAKE = ["--train_module", "tests.helpers.fake_train"]


def space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def study_trials(out: Path) -> list:
    return optuna.load_study(study_name="retriever-search", storage=f"sqlite:///{out / 'study.db'}").trials


def test_four_trials_one_pruned(tmp_path: Path) -> None:
    spec = space(tmp_path, "learning_rate: {type: float, low: 0.2, high: 0.9}\n")
    out = tmp_path / "out"
    assert main(["--space", str(spec), "--trials", "4", "--out", str(out), "--pruner", "threshold",
                 "--prune_below", "0.1", *FAKE, "--", "--eval_data", "x"]) == 0
    states = [t.state.name for t in study_trials(out)]
    assert states == ["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE"]
    best = json.loads((out / "best_params.json").read_text())
    values = {t.number: t.value for t in study_trials(out) if t.value is not None}
    assert best["value"] == max(values.values()) == best["params"]["learning_rate"]
    assert best["command"][-2:] == ["--output_dir", str(out / "trials" / f"trial-{best['trial']}")]
    assert len((out / "trials.csv").read_text().splitlines()) == 5
    assert (out / "history.png").exists() and (out / "importance.png").exists()


def test_a_search_killed_mid_trial_resumes_with_its_finished_trials(tmp_path: Path) -> None:
    spec = space(tmp_path, "learning_rate: {type: float, low: 0.2, high: 0.9}\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "retriever.search", "--space", str(spec), "--trials", "3", "--out", str(out),
               "--pruner", "none", "--heartbeat", "1", *FAKE, "--", "--eval_data", "x"]
    env = {**os.environ, "FAKE_TRAIN_SECONDS": "0.3"}
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while not (out / "trials" / "trial-1" / "log.jsonl").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = study_trials(out)[0]
    assert first.state.name == "COMPLETE"
    time.sleep(2.5)  # the killed trial's heartbeat grows stale (2 x --heartbeat)
    assert subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, timeout=120).returncode == 0
    trials = study_trials(out)
    assert trials[0].value == first.value and trials[0].params == first.params
    finished = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(finished) == 3 and trials[1].state.name == "FAIL"  # the one running at the kill


def test_real_trials_train_and_are_scored(tiny_model_dir, train_data, tmp_path: Path) -> None:
    """Two trials of the real trainer on the tiny model: each trains and is scored on the held-out task."""
    beir = make_beir(tmp_path / "beir")
    spec = space(tmp_path, "learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n")
    fixed = train_args(tiny_model_dir("qwen2_vl"), train_data, tmp_path / "unused", "--max_steps", "2")
    fixed = [a for i, a in enumerate(fixed) if a != "--output_dir" and fixed[i - 1] != "--output_dir"]
    fixed = [a for a in fixed if a not in ("--learning_rate", "1e-3")]
    out = tmp_path / "out"
    assert main(["--space", str(spec), "--trials", "2", "--out", str(out), "--", *fixed, "--eval_data", str(beir),
                 "--eval_steps", "1"]) == 0
    trials = study_trials(out)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert all(0 <= t.value <= 1 and set(t.intermediate_values) == {1, 2} for t in trials)
    assert (out / "trials" / "trial-0" / "final").is_dir()


@pytest.mark.parametrize("text, message", [
    ("{}\n", "empty; give a mapping of retriever.train flags to distributions"),
    ("learning_rate: {type: float, low: 0.1, high: 0.01}\n", "learning_rate: empty range: low 0.1 > high 0.01"),
    ("learning_rate: {type: float, low: 0, high: 1, log: true}\n", "learning_rate: a log range needs low > 0"),
    ("lora_r: {type: categorical, choices: []}\n", "lora_r: a categorical needs a non-empty list of choices"),
    ("temperature: {type: normal}\n", "temperature: give {type: float|int|categorical, ...}"),
])
def test_a_bad_space_is_one_line(tmp_path: Path, capsys, text: str, message: str) -> None:
    spec = space(tmp_path, text)
    line = one_error_line(main, ["--space", str(spec), "--trials", "1", "--out", str(tmp_path / "o"), "--",
                                 "--eval_data", "x"], capsys)
    assert line.startswith(f"error: --space {spec}: {message}")


def test_a_flag_both_fixed_and_searched_is_one_line(tmp_path: Path, capsys) -> None:
    line = one_error_line(main, ["--trials", "1", "--out", str(tmp_path / "o"), "--", "--eval_data", "x",
                                 "--temperature", "0.02"], capsys)
    assert line == "error: --temperature: both fixed after -- and searched in the default space; drop one"
