"""eval.compare: per task and metric, means, wins/ties/losses and the paired randomization test's p-value (equal to
exact enumeration of the sign flips); mteb result JSON gives means only; bad inputs are one line."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from eval.compare import main, paired_p_value
from tests.helpers.cli import one_error_line

# Per-query nDCG@10 of two systems on 10 queries: multiples of 1/8, so every mean is exact in float64.
A = np.array([0.5, 0.25, 0.75, 1.0, 0.125, 0.5, 0.625, 0.375, 0.875, 0.25])
B = np.array([0.75, 0.25, 1.0, 1.0, 0.5, 0.375, 0.875, 0.625, 0.875, 0.5])


def exact_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p of the paired randomization test by enumerating all 2^n sign flips of the differences."""
    d = b - a
    observed = abs(d.mean())
    flips = [abs((d * np.array(signs)).mean()) >= observed for signs in itertools.product((1, -1), repeat=len(d))]
    return sum(flips) / len(flips)


def test_p_value_equals_exact_enumeration() -> None:
    assert paired_p_value(A, B) == pytest.approx(exact_p(A, B), abs=1e-12)
    assert paired_p_value(A, A) == 1.0
    assert 0 < paired_p_value(A, B) < 0.2


def write_results(root: Path, name: str, task: str, values: np.ndarray) -> Path:
    out = root / name
    (out / task).mkdir(parents=True)
    per_query = {f"q{i}": {"ndcg_at_10": float(v), "ndcg_at_5": float(v)} for i, v in enumerate(values)}
    aggregate = {"ndcg_at_10": float(values.mean()), "ndcg_at_5": float(values.mean())}
    (out / task / "metrics.json").write_text(json.dumps({"aggregate": aggregate, "per_query": per_query}))
    (out / "metrics.json").write_text(json.dumps({"tasks": {task: aggregate}, "average": aggregate}))
    return out


def test_cli_table_json_and_plot(tmp_path: Path, capsys) -> None:
    base, other = write_results(tmp_path, "base", "docvqa", A), write_results(tmp_path, "tuned", "docvqa", B)
    mteb_json = tmp_path / "DocVQA.json"
    mteb_json.write_text(json.dumps({"task_name": "docvqa", "scores": {"test": [
        {"hf_subset": "en", "ndcg_at_10": 0.5, "main_score": 0.5}, {"hf_subset": "fr", "ndcg_at_10": 0.75}]}}))
    assert main([str(base), str(other), str(mteb_json), "--metrics", "ndcg_at_10", "--json", str(tmp_path / "c.json"),
                 "--out", str(tmp_path / "report")]) == 0
    rows = json.loads((tmp_path / "c.json").read_text())
    tuned, mteb = rows
    assert (tuned["wins"], tuned["ties"], tuned["losses"]) == (6, 3, 1)
    assert tuned["difference"] == pytest.approx(B.mean() - A.mean())
    assert tuned["p_value"] == pytest.approx(exact_p(A, B), abs=1e-12) and tuned["queries"] == 10
    assert mteb["other_mean"] == pytest.approx(0.625) and mteb["p_value"] is None and mteb["wins"] is None
    out = capsys.readouterr().out
    assert "| docvqa | ndcg_at_10 | base | tuned |" in out and "- (no per-query scores)" in out
    assert (tmp_path / "report" / "compare.png").stat().st_size > 0


def test_bad_inputs_are_one_line(tmp_path: Path, capsys) -> None:
    base, other = write_results(tmp_path, "base", "docvqa", A), write_results(tmp_path, "other", "infovqa", B)
    line = one_error_line(main, [str(base), str(other)], capsys)
    assert line == "error: base and other share no task (tasks: docvqa / infovqa)"
    same = write_results(tmp_path, "same", "docvqa", B)
    line = one_error_line(main, [str(base), str(same), "--metrics", "recall_at_7"], capsys)
    assert line.startswith("error: --metrics recall_at_7: base has no recall_at_7 for task docvqa")
    (tmp_path / "empty").mkdir()
    line = one_error_line(main, [str(base), str(tmp_path / "empty")], capsys)
    assert line.startswith(f"error: {tmp_path / 'empty'}: no metrics.json")
