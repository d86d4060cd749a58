"""eval.score_run and eval.trec on TREC / BEIR files, including malformed input."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from eval.metrics import evaluate_run
from eval.score_run import main
from eval.trec import FormatError, read_qrels, read_run, write_run

RUN = {"q1": {"d1": 2.0, "d2": 1.0, "d3": 1.0}, "q2": {"d3": 0.5, "d1": 0.25}}
QRELS = {"q1": {"d3": 1}, "q2": {"d3": 2, "d2": 1}}


def test_score_run_on_trec_and_beir_files(tmp_path) -> None:
    run_path, trec_qrels, beir_qrels = tmp_path / "run.trec", tmp_path / "qrels.trec", tmp_path / "qrels.tsv"
    write_run(run_path, RUN)
    trec_qrels.write_text("".join(f"{q} 0 {d} {r}\n" for q, ds in QRELS.items() for d, r in ds.items()))
    beir_qrels.write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{r}\n" for q, ds in QRELS.items() for d, r in ds.items()))
    assert read_run(run_path) == RUN
    assert read_qrels(trec_qrels) == QRELS == read_qrels(beir_qrels)
    # ties are written in trec_eval order: d3 before d2 at equal score
    assert [line.split()[2] for line in run_path.read_text().splitlines()[:3]] == ["d1", "d3", "d2"]

    out = tmp_path / "m.json"
    assert main(["--run", str(run_path), "--qrels", str(beir_qrels), "--k", "1,2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result == json.loads(json.dumps(evaluate_run(QRELS, RUN, [1, 2])))
    assert result["per_query"]["q1"]["mrr_at_2"] == 0.5  # d3 wins the tie with d2 (docid descending)
    assert result["aggregate"]["recall_at_1"] == pytest.approx(0.25)  # q1: miss; q2: 1 of 2

    proc = subprocess.run([sys.executable, "-m", "eval.score_run", "--run", str(run_path), "--qrels", str(trec_qrels)],
                          capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout)["aggregate"]["ndcg_at_100"] > 0


def test_bad_lines_name_file_and_line(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 oops t\n")
    with pytest.raises(FormatError, match=r"bad.trec:2:"):
        read_run(bad)
    bad.write_text("q1 Q0 d1 1 0.5 t\n\nq1 Q0 d2 2\n")
    with pytest.raises(FormatError, match=r"bad.trec:3: expected 6 fields"):
        read_run(bad)
    bad.write_text("q1 Q0 d1 1 0.5 t\nq1 Q0 d1 2 0.4 t\n")
    with pytest.raises(FormatError, match="twice"):
        read_run(bad)
    qrels = tmp_path / "q.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\n")
    with pytest.raises(FormatError, match=r"q.tsv:2:"):
        read_qrels(qrels)
    with pytest.raises(SystemExit) as exit_info:
        main(["--run", str(bad), "--qrels", str(qrels)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {bad}:2: document 'd1' appears twice for query 'q1'\n"
