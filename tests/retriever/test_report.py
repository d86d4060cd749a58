"""retriever.report: one page per run (curves, held-out metrics with the best step, configuration, environment,
final table) from what a real tiny training run leaves; a folder that is not a run is one line."""
from __future__ import annotations

import json
from pathlib import Path

from retriever.report import main
from tests.helpers.cli import one_error_line
from tests.helpers.toy_retrieval import make_beir
from tests.helpers.training_runs import run_train, train_args


def test_report_of_a_run_with_evaluations(tiny_model_dir, train_data, tmp_path: Path, capsys) -> None:
    beir, run = make_beir(tmp_path / "beir"), tmp_path / "run"
    result = run_train(train_args(tiny_model_dir("qwen2_vl"), train_data, run, "--max_steps", "2", "--eval_data",
                                  str(beir), "--eval_steps", "1", "--save_best"))
    assert result.returncode == 0, result.stderr[-3000:]
    environment = json.loads((run / "environment.json").read_text())
    assert len(environment) == 1 and environment[0]["step"] == 0 and environment[0]["versions"]["torch"]
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"tasks": {"toy": {"ndcg_at_5": 0.5, "ndcg_at_10": 0.6}},
                                   "average": {"ndcg_at_5": 0.5, "ndcg_at_10": 0.6}}))
    assert main([str(run), "--metrics", str(metrics)]) == 0
    text = (run / "report" / "report.md").read_text()
    for section in ("## Training curves", "## Held-out metrics over steps", "## Final evaluation",
                    "## Configuration", "## Where it ran"):
        assert section in text, section
    best = json.loads((run / "best" / "best.json").read_text())
    assert f"Best: step {best['step']}" in text and "| 1 | " in text and "| 2 | " in text
    assert "| toy |" in text and '"max_steps": 2' in text and environment[0]["versions"]["torch"] in text
    assert (run / "report" / "curves.png").stat().st_size > 0 and (run / "report" / "eval.png").stat().st_size > 0
    assert str(run / "report" / "report.md") in capsys.readouterr().out


def test_a_folder_without_a_log_is_one_line(tmp_path: Path, capsys) -> None:
    line = one_error_line(main, [str(tmp_path)], capsys)
    assert line == f"error: {tmp_path}: no log.jsonl records (give the --output_dir of a retriever.train run)"
