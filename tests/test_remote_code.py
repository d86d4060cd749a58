"""Code shipped with a checkpoint never runs without --trust_remote_code: not through a "y" on stdin, not in any
loader of the project. The checkpoint below is a tiny Qwen2-VL whose config.json ``auto_map`` names a module that
writes a marker file when it is imported."""
from __future__ import annotations

import ast
import io
import json
import shutil
import sys
from pathlib import Path

import pytest

from data_prep.errors import InputError
from query_generation import filter as qfilter
from query_generation import generate as qgenerate
from query_generation.generator_args import generator_options
from retriever.model.saved import load_encoder
from tests.helpers.paths import REPO_ROOT
from tests.helpers.query_data import make_store

PACKAGES = ("data_prep", "retriever", "eval", "query_generation", "bench")


@pytest.fixture
def remote_code_dir(tiny_model_dir, tmp_path) -> Path:
    out = tmp_path / "remote_code_vlm"
    shutil.copytree(tiny_model_dir("qwen2_vl"), out)
    config = json.loads((out / "config.json").read_text())
    config["model_type"] = "remote_code_vlm"  # unknown to transformers: only the checkpoint's code can load it
    config["auto_map"] = {"AutoConfig": "payload.Config", "AutoModelForImageTextToText": "payload.Model"}
    (out / "config.json").write_text(json.dumps(config))
    (out / "payload.py").write_text(f"from pathlib import Path\nPath({str(tmp_path / 'MARKER')!r}).write_text('ran')\n")
    return out


def run_refused(main, argv: list[str], marker: Path, capsys, monkeypatch) -> str:
    """Run a CLI with "y" waiting on stdin; return its one error line, after checking that nothing ran."""
    monkeypatch.delenv("VLMRET_DEBUG", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert not marker.exists(), "the checkpoint's code ran"
    assert exit_info.value.code == 2 and len(errors) == 1 and "Traceback" not in captured.err
    assert "Do you wish to run the custom code" not in captured.out + captured.err
    return errors[0]


def test_generate_never_runs_checkpoint_code(remote_code_dir, tmp_path, capsys, monkeypatch):
    store = make_store(tmp_path / "store", ["d/1"])
    line = run_refused(qgenerate.main, ["--store", str(store), "--out", str(tmp_path / "q.jsonl"), "--backend",
                                        "transformers", "--model", str(remote_code_dir)],
                       tmp_path / "MARKER", capsys, monkeypatch)
    assert line.startswith(f"error: {remote_code_dir}: loading this checkpoint needs Python code shipped with it")
    assert "--trust_remote_code" in line


def test_filter_judge_and_retriever_never_run_checkpoint_code(remote_code_dir, tmp_path, capsys, monkeypatch):
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"page_id": "d/1", "doc_id": "d", "query": "wind farms in Denmark"}) + "\n")
    io_flags = ["--queries", str(queries), "--out", str(tmp_path / "o.jsonl"), "--rejected", str(tmp_path / "r.jsonl")]
    judge = run_refused(qfilter.main, io_flags + ["--judge_model", str(remote_code_dir), "--judge_backend",
                                                  "transformers"], tmp_path / "MARKER", capsys, monkeypatch)
    assert "--judge_trust_remote_code" in judge
    store = make_store(tmp_path / "store", ["d/1"])
    retriever = run_refused(qfilter.main, io_flags + ["--retriever", str(remote_code_dir), "--store", str(store)],
                            tmp_path / "MARKER", capsys, monkeypatch)
    assert retriever.startswith(f"error: {remote_code_dir}: loading this checkpoint needs Python code")


def test_the_retriever_loader_refuses_checkpoint_code(remote_code_dir, tmp_path):
    with pytest.raises(InputError, match="which runs only with --trust_remote_code: pass it if"):
        load_encoder(remote_code_dir)
    assert not (tmp_path / "MARKER").exists()


def test_the_flag_reaches_the_generators():
    generate_args = qgenerate.build_parser().parse_args(["--store", "s", "--out", "o", "--model", "m"])
    assert generator_options(generate_args).trust_remote_code is False
    generate_args.trust_remote_code = True
    assert generator_options(generate_args).trust_remote_code is True
    filter_args = qfilter.build_parser().parse_args(["--queries", "q", "--out", "o", "--rejected", "r",
                                                     "--judge_trust_remote_code"])
    assert generator_options(filter_args, "judge_").trust_remote_code is True and filter_args.trust_remote_code is False


def _from_pretrained_calls_without_the_flag(path: Path) -> list[str]:
    """``Auto*.from_pretrained(...)`` calls that neither pass ``trust_remote_code`` nor forward ``**kwargs``
    (the backbone adapters' ``load_model``, which every caller gives ``trust_remote_code``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained"
                and isinstance(node.func.value, ast.Name) and node.func.value.id.startswith("Auto")
                and not any(k.arg in ("trust_remote_code", None) for k in node.keywords)):
            found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    return found


def test_every_auto_class_load_states_trust_remote_code():
    files = [p for package in PACKAGES for p in sorted((REPO_ROOT / package).rglob("*.py"))]
    assert [call for path in files for call in _from_pretrained_calls_without_the_flag(path)] == []
