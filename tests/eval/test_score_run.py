"""eval.score_run and eval.trec on TREC / BEIR files, including malformed input."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from eval.metrics import evaluate_run
from eval.score_run import main
from eval.trec import FormatError, decode_id, encode_id, read_qrels, read_run, write_run

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


ODD_IDS = ["scan 1.pdf/3", "a\tb", "50%", "a%20b", "x\u3000y\n", "a%2Fb"]


def test_ids_with_whitespace_and_percent_round_trip(tmp_path) -> None:
    run = {"q 1": {d: float(i) for i, d in enumerate(ODD_IDS)}, "q\t%2": {"50%": 1.0}}
    path = tmp_path / "run.trec"
    write_run(path, run, tag="my model")
    assert all(len(line.split()) == 6 for line in path.read_text().splitlines())
    assert "q%201 Q0 scan%201.pdf/3 6 0.0 my%20model\n" in path.read_text()
    assert read_run(path) == run
    write_run(path, run, tag="")  # `--model .` has an empty name
    assert read_run(path) == run

    qrels = {"q 1": {"a\tb": 1, "50%": 2}, "q\t%2": {"x\u3000y\n": 1}}
    trec = tmp_path / "qrels.trec"
    trec.write_text("".join(f"{encode_id(q)} 0 {encode_id(d)} {r}\n" for q, ds in qrels.items() for d, r in ds.items()))
    assert read_qrels(trec) == qrels
    beir = tmp_path / "qrels.tsv"  # tab-separated: ids with spaces and '%' are read literally
    beir.write_text("query-id\tcorpus-id\tscore\nq 1\tscan 1.pdf/3\t1\nq 1\ta%20b\t1\n")
    assert read_qrels(beir) == {"q 1": {"scan 1.pdf/3": 1, "a%20b": 1}}
    out = tmp_path / "m.json"
    assert main(["--run", str(path), "--qrels", str(trec), "--k", "1,3", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads(json.dumps(evaluate_run(qrels, run, [1, 3])))


def test_every_field_separator_is_encoded() -> None:
    """Each character str.split() splits on (and '%') stays inside one field and decodes back."""
    for char in (chr(c) for c in range(sys.maxunicode + 1)):
        if char.isspace() or char == "%":
            field = encode_id(f"a{char}b")
            assert field.split() == [field] and decode_id(field) == f"a{char}b"
    assert decode_id("a%2Fb%41") == "a%2Fb%41" and decode_id("a%2520") == "a%20" and decode_id("a%09") == "a\t"


def test_evaluator_run_scores_the_same_with_odd_ids(tmp_path, monkeypatch) -> None:
    """eval.retrieval's run.trec on ids with a space, a tab and a '%', scored by eval.score_run against the task's
    qrels as a TREC file: the evaluator's own per-query metrics."""
    import eval.retrieval
    from tests.helpers.toy_retrieval import KnownAnswerEncoder, make_beir

    beir = make_beir(tmp_path / "beir", query_prefix="query 50%\t", page_prefix="scan 1.pdf\t%")
    monkeypatch.setattr(eval.retrieval, "load_encoder_from_args", lambda args, device: KnownAnswerEncoder(True))
    assert eval.retrieval.main(["--model", "toy model", "--tasks", str(beir), "--out", str(tmp_path / "out"),
                                "--k", "1,5", "--chunk_pages", "4"]) == 0
    expected = json.loads((tmp_path / "out" / "beir" / "metrics.json").read_text())["per_query"]
    run_path = tmp_path / "out" / "beir" / "run.trec"
    assert all(len(line.split()) == 6 for line in run_path.read_text().splitlines())

    from datasets import load_from_disk
    rows = load_from_disk(str(beir / "qrels"))
    trec = tmp_path / "qrels.trec"
    trec.write_text("".join(f"{encode_id(r['query-id'])} 0 {encode_id(r['corpus-id'])} {r['score']}\n" for r in rows))
    out = tmp_path / "m.json"
    assert main(["--run", str(run_path), "--qrels", str(trec), "--k", "1,5", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["per_query"] == expected
