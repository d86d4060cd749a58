"""The error convention of every CLI: a user error is one line ``error: <message>`` and exit status 2; a bug keeps
its traceback; ``VLMRET_DEBUG=1`` / ``--debug`` show the traceback of user errors too; torchrun ranks all report."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from data_prep.errors import DEBUG_ENV, InputError, cli
from tests.helpers.cli import one_error_line
from tests.helpers.paths import REPO_ROOT

REPO = REPO_ROOT


def _bad_pages(tmp: Path) -> Path:
    (tmp / "pages.jsonl").write_text('{"doc_id": "a", "page": 1, "text": "A sentence of more than five words."}\n')
    return tmp / "pages.jsonl"


def _bad_json(tmp: Path) -> Path:
    (tmp / "pairs.jsonl").write_text('{"query": "q", "pos": ["a/1"]}\n{"query": "q2", "pos": [\n')
    return tmp / "pairs.jsonl"


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _latin1_pages(tmp: Path) -> Path:
    (tmp / "pages.jsonl").write_bytes(b'{"id": "a/1", "doc_id": "a"}\n{"id": "caf\xe9/1", "doc_id": "caf\xe9"}\n')
    return tmp / "pages.jsonl"


def _unknown_page(tmp: Path) -> list[str]:
    """retriever.train arguments whose pairs name a page that no source holds (the issue's first example)."""
    (tmp / "images").mkdir()
    (tmp / "pairs.jsonl").write_text('{"query": "q", "pos": ["nope/1"]}\n')
    return ["--model_name_or_path", str(tmp / "model"), "--output_dir", str(tmp / "out"), "--train_data",
            str(tmp / "pairs.jsonl"), "--image_root", str(tmp / "images"), "--max_steps", "1"]


def _prompt_without_image(tmp: Path) -> list[str]:
    """query_generation.generate arguments whose prompt file has no {image} slot."""
    (tmp / "prompt.txt").write_text("Write {num_queries} queries about this page.\n")
    return ["--store", str(tmp / "store"), "--out", str(tmp / "q.jsonl"), "--backend", "transformers", "--model",
            str(tmp / "model"), "--prompt", str(tmp / "prompt.txt")]


def _incomplete_checkpoint(tmp: Path) -> Path:
    ckpt = tmp / "run" / "checkpoint-3"
    ckpt.mkdir(parents=True)
    (ckpt / "backend.pt").write_bytes(b"half")
    return ckpt


def _not_a_lora_run(tmp: Path) -> Path:
    (tmp / "full_run").mkdir()
    return tmp / "full_run"


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _run(tmp: Path, qid: bytes) -> Path:
    """A TREC run of one line for query ``qid``."""
    return _write(tmp / "run.trec", qid + b" Q0 d1 1 0.5 tag\n")


def _qrels(tmp: Path) -> Path:
    return _write(tmp / "qrels.tsv", b"q1 0 d1 1\n")


def _lora_run(folder: Path, base: Path | None = None) -> Path:
    """A directory that looks like a LoRA run (its adapter config naming ``base``) to the path checks."""
    config = {"base_model_name_or_path": str(base or folder.parent / "hub-base")}
    _write(folder / "adapter_config.json", json.dumps(config).encode())
    return folder


def _model(folder: Path) -> Path:
    """A directory that stands for a checkpoint in the path checks."""
    return _write(folder / "config.json", b"{}").parent


# module, arguments (built in a temporary folder), what the one line must contain
CASES: dict[str, tuple[str, Callable[[Path], list[str]], str]] = {
    "split_pdfs": ("data_prep.split_pdfs", lambda t: ["--pdfs", str(t / "nowhere"), "--out", str(t / "p.jsonl")],
                   "input not found: {t}/nowhere (a folder of PDFs, a .pdf file or a list of PDF paths)"),
    "render": ("data_prep.render", lambda t: ["--pages", str(t / "missing.jsonl"), "--out", str(t / "store")],
               "JSONL file {t}/missing.jsonl does not exist"),
    "inspect": ("data_prep.inspect", lambda t: [str(t / "store")], "page store not found: {t}/store"),
    "sample_pdfs": ("data_prep.sample_pdfs", lambda t: ["--out", str(_bad_json(t))],
                    "{t}/pairs.jsonl: --out is a file, expected a directory: give a directory path"),
    "render_out_is_a_file": ("data_prep.render", lambda t: ["--pages", str(_bad_pages(t)), "--out", str(_bad_json(t))],
                             "{t}/pairs.jsonl: --out is a file, expected a directory"),
    "from_text_out_is_a_directory": ("query_generation.from_text", lambda t: ["--pages", str(_bad_pages(t)), "--out",
                                                                              str(_folder(t / "out"))],
                                     "{t}/out: --out is a directory, expected a file: give a file path"),
    "from_text_not_utf8": ("query_generation.from_text", lambda t: ["--pages", str(_latin1_pages(t)), "--out",
                                                                    str(t / "o")],
                           "{t}/pages.jsonl: line 2: JSONL file is not UTF-8 text (invalid continuation byte 0xe9); "
                           "convert it to UTF-8"),
    "split_pdfs_out_under_a_file": ("data_prep.split_pdfs", lambda t: ["--pdfs", str(t), "--out",
                                                                       str(_bad_json(t) / "pages.jsonl")],
                                    "{t}/pairs.jsonl/pages.jsonl: --out cannot be created: {t}/pairs.jsonl is a file"),
    "build_splits": ("data_prep.build_splits",
                     lambda t: ["--pairs", str(_bad_json(t)), "--train", str(t / "a"), "--test", str(t / "b")],
                     "{t}/pairs.jsonl: line 2: invalid JSON"),
    "academic": ("data_prep.academic", lambda t: ["--set", "chartqa", "--input", str(t / "x"), "--store",
                                                  str(t / "s"), "--pairs", str(t / "p.jsonl")],
                 "chartqa input not found: {t}/x"),
    "from_text": ("query_generation.from_text", lambda t: ["--pages", str(_bad_pages(t)), "--out", str(t / "o")],
                  "{t}/pages.jsonl: line 1: no 'id' field"),
    "generate": ("query_generation.generate", _prompt_without_image,
                 "prompt file {t}/prompt.txt: missing slot(s) {{image}} (required: {{image}}, {{num_queries}}); add "
                 "them to the text"),
    "filter": ("query_generation.filter", lambda t: ["--queries", str(_bad_pages(t)), "--out", str(t / "p.jsonl"),
                                                     "--rejected", str(t / "r.jsonl")],
               "{t}/pages.jsonl: line 1: no 'query' string (--queries takes the output of query_generation.generate, "
               "or pairs)"),
    "train": ("retriever.train", _unknown_page,
              "{t}/pairs.jsonl: line 1: unknown page id 'nope/1' (looked in: "),
    "mine": ("retriever.mine", lambda t: ["--model", str(t / "model"), "--train_data", str(t / "missing.jsonl"),
                                          "--image_root", str(t), "--out", str(t / "o.jsonl")],
             "training data {t}/missing.jsonl does not exist"),
    "merge": ("retriever.merge", lambda t: ["--model", str(_not_a_lora_run(t)), "--out", str(t / "m")],
              "{t}/full_run/adapter_config.json is missing: {t}/full_run is not a LoRA run to merge"),
    "tiny": ("retriever.tiny", lambda t: ["--arch", "qwen2_vl", "--out", str(_bad_json(t))],
             "--out {t}/pairs.jsonl is a file; give a directory"),
    "score_run": ("eval.score_run", lambda t: ["--run", str(t / "run.trec"), "--qrels", str(t / "q.tsv")],
                  "run file {t}/run.trec does not exist"),
    "retrieval": ("eval.retrieval", lambda t: ["--model", str(_incomplete_checkpoint(t)), "--tasks", str(t / "task"),
                                               "--out", str(t / "eval")],
                  "{t}/run/checkpoint-3 is an incomplete training checkpoint (no COMPLETE marker"),
    "retrieval_mteb_copy": ("eval.retrieval", lambda t: ["--model", str(t), "--tasks",
                                                         f"Vidore2ESGReportsRetrieval={t}/esg", "--out", str(t / "e")],
                            "--tasks Vidore2ESGReportsRetrieval={t}/esg: {t}/esg does not exist (a local copy of "
                            "Vidore2ESGReportsRetrieval's dataset)"),
    "export": ("retriever.export", lambda t: ["--model", str(t), "--format", "colpali", "--out", str(t / "x"),
                                              "--metrics", str(t / "metrics.json")],
               "--metrics {t}/metrics.json does not exist (the metrics.json eval.retrieval wrote)"),
    "image_text": ("eval.image_text", lambda t: ["--model", str(t), "--karpathy_json", str(_bad_json(t)),
                                                 "--image_root", str(t)],
                   "{t}/pairs.jsonl: line 2: invalid JSON"),
    "score_run_empty_run": ("eval.score_run", lambda t: ["--run", str(_write(t / "run.trec", b"\n")), "--qrels",
                                                         str(_qrels(t))],
                            "{t}/run.trec: the run file has no lines; nothing to score"),
    "score_run_no_query_with_qrels": ("eval.score_run", lambda t: ["--run", str(_run(t, b"q9")), "--qrels",
                                                                   str(_qrels(t))],
                                      "{t}/run.trec: none of its 1 queries has qrels in {t}/qrels.tsv"),
    "score_run_run_not_utf8": ("eval.score_run", lambda t: ["--run", str(_run(t, b"caf\xe9")), "--qrels",
                                                            str(_qrels(t))],
                               "{t}/run.trec: line 1: run file is not UTF-8 text (invalid continuation byte 0xe9)"),
    "score_run_qrels_not_utf8": ("eval.score_run", lambda t: ["--run", str(_run(t, b"q1")), "--qrels",
                                                              str(_write(t / "q.tsv", b"q1 0 d\xe9 1\n"))],
                                 "{t}/q.tsv: line 1: qrels file is not UTF-8 text"),
    "retrieval_out_is_a_file": ("eval.retrieval", lambda t: ["--model", str(t / "m"), "--tasks", str(t / "task"),
                                                             "--out", str(_bad_json(t))],
                                "{t}/pairs.jsonl: --out is a file, expected a directory"),
    "mine_out_is_a_directory": ("retriever.mine", lambda t: ["--model", str(t / "m"), "--train_data", str(_bad_json(t)),
                                                             "--image_root", str(t), "--out", str(_folder(t / "o"))],
                                "{t}/o: --out is a directory, expected a file"),
    "export_out_is_a_file": ("retriever.export", lambda t: ["--model", str(t / "m"), "--format", "colpali", "--out",
                                                            str(_bad_json(t))],
                             "{t}/pairs.jsonl: --out is a file, expected a directory"),
    "train_mixture_file_missing": ("retriever.train", lambda t: ["--model_name_or_path", str(t / "m"), "--output_dir",
                                                                 str(t / "out"), "--train_data", str(t / "mix.yaml")],
                                   "mixture file {t}/mix.yaml does not exist"),
    "train_mixture_file_not_yaml": ("retriever.train", lambda t: ["--model_name_or_path", str(t / "m"),
                                                                  "--output_dir", str(t / "out"), "--train_data",
                                                                  str(_write(t / "mix.yaml", b"sources: [a, \n"))],
                                    "{t}/mix.yaml: invalid YAML in the mixture file"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_and_status_2(name, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    module, make_args, expected = CASES[name]
    main = __import__(module, fromlist=["main"]).main
    args = make_args(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expected.format(t=tmp_path) in lines[0]


def test_debug_flag_and_environment_show_the_traceback(tmp_path, monkeypatch):
    from eval.score_run import main

    args = ["--run", str(tmp_path / "run.trec"), "--qrels", str(tmp_path / "q.tsv")]
    with pytest.raises(FileNotFoundError, match="run file .* does not exist"):
        main([*args, "--debug"])
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(FileNotFoundError, match="run file .* does not exist"):
        main(args)


def test_bugs_keep_their_traceback_and_a_full_disk_is_a_user_error(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)

    @cli
    def buggy(argv: list[str]) -> None:
        {}["no such key"]  # a KeyError from a bug is not an unknown-id user error

    with pytest.raises(KeyError):
        buggy([])

    @cli
    def writes(argv: list[str]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(SystemExit) as exit_info:
        writes([])
    assert exit_info.value.code == 2 and capsys.readouterr().err == "error: [Errno 28] No space left on device\n"


def test_dataloader_worker_errors_and_ranks_are_one_line(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")

    @cli
    def in_worker(argv: list[str]) -> None:  # how torch re-raises an error of a DataLoader worker process
        raise InputError("Caught InputError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                         "last):\n  File \"x.py\", line 1\ndata_prep.errors.InputError: page 'a/1': bad")

    with pytest.raises(SystemExit):
        in_worker([])
    assert capsys.readouterr().err == "error: rank 1/2: page 'a/1': bad\n"


@pytest.mark.distributed
def test_every_torchrun_rank_reports_and_the_script_exits_2(tmp_path):
    ckpt = _incomplete_checkpoint(tmp_path)
    env = {**os.environ, "PYTHON": sys.executable, "NPROC_PER_NODE": "2", "PYTHONPATH": str(REPO),
           "MASTER_PORT": str(29700 + os.getpid() % 200)}
    tasks = tmp_path / "beir"
    tasks.mkdir()
    proc = subprocess.run(["bash", "shell/eval_dist.sh", "--model", str(ckpt), "--tasks", str(tasks), "--out",
                           str(tmp_path / "eval")], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr[-3000:]
    for rank in (0, 1):
        assert f"error: rank {rank}/2: {ckpt} is an incomplete training checkpoint" in proc.stderr


def test_argparse_errors_keep_status_2(capsys):
    from data_prep.inspect import main

    with pytest.raises(SystemExit) as exit_info:
        main(["store", "--no-such-flag"])
    assert exit_info.value.code == 2 and "error: unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_sound_json_report_when_nothing_is_wrong(tmp_path, capsys):
    from data_prep.inspect import main
    from data_prep.store import PageStoreWriter

    with PageStoreWriter(tmp_path / "s") as writer:
        from PIL import Image
        import io

        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, "PNG")
        writer.add("a/1", buf.getvalue())
    assert main([str(tmp_path / "s"), "--verify", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"path": str(tmp_path / "s"), "shards": 1, "pages": 1,
                                                   "problems": [], "ok": True}


def _pdf(path: Path) -> Path:
    import pymupdf

    path.parent.mkdir(parents=True, exist_ok=True)
    doc = pymupdf.open()
    doc.new_page(width=200, height=200).insert_text((20, 50), "one page")
    doc.save(path)
    return path


def _journal(path: Path) -> Path:
    """A queries file as query_generation.generate writes it."""
    path.write_text('{"page_id": "a/1", "doc_id": "a", "query": "solar power Spain", "kind": "topical"}\n')
    return path


def _release(folder: Path) -> Path:
    """A DocVQA annotation file (the release's layout) in ``folder``."""
    folder.mkdir()
    (folder / "val_v1.0.json").write_text('{"data": []}')
    return folder / "val_v1.0.json"


def _store(tmp: Path) -> Path:
    from tests.helpers.query_data import make_store

    return make_store(tmp / "store", ["a/1"])


# module, arguments and the input they must leave untouched (built in a temporary folder), what the line must contain
OVERWRITES: dict[str, tuple[str, Callable[[Path], tuple[list, Path]], str]] = {
    "split_pdfs --out = a PDF of the input folder": (
        "data_prep.split_pdfs", lambda t: (["--pdfs", t / "pdfs", "--out", _pdf(t / "pdfs" / "a.pdf")],
                                           t / "pdfs" / "a.pdf"),
        "{t}/pdfs/a.pdf: --out is the input a PDF of --pdfs"),
    "build_splits --train = --pairs": (
        "data_prep.build_splits", lambda t: (["--pairs", _bad_json(t), "--train", t / "pairs.jsonl", "--test",
                                              t / "te"], t / "pairs.jsonl"),
        "{t}/pairs.jsonl: --train is the input --pairs"),
    "build_splits --train = --test": (
        "data_prep.build_splits", lambda t: (["--pairs", _bad_json(t), "--train", t / "s", "--test", t / "s"],
                                             t / "pairs.jsonl"),
        "{t}/s: given as both --train and --test"),
    "filter --out = --queries": (
        "query_generation.filter", lambda t: (["--queries", _journal(t / "q.jsonl"), "--out", t / "q.jsonl",
                                               "--rejected", t / "r.jsonl"], t / "q.jsonl"),
        "{t}/q.jsonl: --out is the input --queries"),
    "filter --rejected = --out": (
        "query_generation.filter", lambda t: (["--queries", _journal(t / "q.jsonl"), "--out", _bad_json(t),
                                               "--rejected", t / "pairs.jsonl"], t / "pairs.jsonl"),
        "{t}/pairs.jsonl: given as both --out and --rejected"),
    "inspect --png onto a shard": (
        "data_prep.inspect", lambda t: ([_store(t), "--dump", "a/1", "--png", t / "store" / "shard-00000.h5"],
                                        t / "store" / "shard-00000.h5"),
        "{t}/store/shard-00000.h5: --png is inside the input STORE"),
    "generate --failures = --out": (
        "query_generation.generate", lambda t: (["--store", _store(t), "--out", _journal(t / "q.jsonl"),
                                                 "--failures", t / "q.jsonl", "--model", "m"], t / "q.jsonl"),
        "{t}/q.jsonl: given as both --out and --failures"),
    "generate --out = --pages": (
        "query_generation.generate", lambda t: (["--store", _store(t), "--pages", _bad_pages(t), "--out",
                                                 t / "pages.jsonl", "--model", "m"], t / "pages.jsonl"),
        "{t}/pages.jsonl: --out is the input --pages"),
    "render --failures = --pages": (
        "data_prep.render", lambda t: (["--pages", _bad_pages(t), "--out", t / "store", "--failures",
                                        t / "pages.jsonl"], t / "pages.jsonl"),
        "{t}/pages.jsonl: --failures is the input --pages"),
    "from_text --out = --pages": (
        "query_generation.from_text", lambda t: (["--pages", _bad_pages(t), "--out", t / "pages.jsonl"],
                                                 t / "pages.jsonl"),
        "{t}/pages.jsonl: --out is the input --pages"),
    "academic --store contains --input": (
        "data_prep.academic", lambda t: (["--set", "docvqa", "--input", _release(t / "work"), "--store", t / "work",
                                          "--pairs", t / "p.jsonl"], t / "work" / "val_v1.0.json"),
        "{t}/work: --store contains the input --input"),
    "mine --out = --train_data": (
        "retriever.mine", lambda t: (["--model", t / "m", "--train_data", _bad_json(t), "--image_root", t, "--out",
                                      t / "pairs.jsonl"], t / "pairs.jsonl"),
        "{t}/pairs.jsonl: --out is the input --train_data"),
    "mine --cache_dir = a page store": (
        "retriever.mine", lambda t: (["--model", t / "m", "--train_data", _bad_json(t), "--page_store", _store(t),
                                      "--out", t / "o.jsonl", "--cache_dir", t / "store"],
                                     t / "store" / "shard-00000.h5"),
        "{t}/store: --cache_dir is the input --page_store"),
    "score_run --out = --run": (
        "eval.score_run", lambda t: (["--run", _run(t, b"q1"), "--qrels", _qrels(t), "--out", t / "run.trec"],
                                     t / "run.trec"),
        "{t}/run.trec: --out is the input --run"),
    "merge --out = --model": (
        "retriever.merge", lambda t: (["--model", _lora_run(t / "lora"), "--out", t / "lora"],
                                      t / "lora" / "adapter_config.json"),
        "{t}/lora: --out is the input --model"),
    "merge --out inside --model": (
        "retriever.merge", lambda t: (["--model", _lora_run(t / "lora"), "--out", t / "lora" / "merged"],
                                      t / "lora" / "adapter_config.json"),
        "{t}/lora/merged: --out is inside the input --model"),
    "merge --out = the LoRA base": (
        "retriever.merge", lambda t: (["--model", _lora_run(t / "lora", _model(t / "base")), "--out", t / "base"],
                                      t / "base" / "config.json"),
        "{t}/base: --out is the input --model's base model"),
    "export --out = --model": (
        "retriever.export", lambda t: (["--model", _model(t / "final"), "--format", "colpali", "--out", t / "final"],
                                       t / "final" / "config.json"),
        "{t}/final: --out is the input --model"),
    "export --out contains --model": (
        "retriever.export", lambda t: (["--model", _model(t / "run" / "final"), "--format", "colpali", "--out",
                                        t / "run"], t / "run" / "final" / "config.json"),
        "{t}/run: --out contains the input --model"),
    "retrieval --out = a --tasks folder": (
        "eval.retrieval", lambda t: (["--model", t / "m", "--tasks", _qrels(t / "task").parent, "--out", t / "task"],
                                     t / "task" / "qrels.tsv"),
        "{t}/task: --out is the input --tasks"),
    "retrieval --out inside --model": (
        "eval.retrieval", lambda t: (["--model", _model(t / "final"), "--tasks", t / "task", "--out",
                                      t / "final" / "eval"], t / "final" / "config.json"),
        "{t}/final/eval: --out is inside the input --model"),
    "image_text --out = --karpathy_json": (
        "eval.image_text", lambda t: (["--model", t / "m", "--karpathy_json", _bad_json(t), "--image_root", t,
                                       "--out", t / "pairs.jsonl"], t / "pairs.jsonl"),
        "{t}/pairs.jsonl: --out is the input --karpathy_json"),
    "train --output_dir = --model_name_or_path": (
        "retriever.train", lambda t: (["--model_name_or_path", _model(t / "model"), "--output_dir", t / "model",
                                       "--train_data", _bad_json(t)], t / "model" / "config.json"),
        "{t}/model: --output_dir is the input --model_name_or_path"),
    "train --output_dir contains --train_data": (
        "retriever.train", lambda t: (["--model_name_or_path", t / "m", "--output_dir", t, "--train_data",
                                       _bad_json(t)], t / "pairs.jsonl"),
        "{t}: --output_dir contains the input --train_data"),
}


@pytest.mark.parametrize("name", OVERWRITES)
def test_an_output_on_an_input_is_refused_and_the_input_kept(name, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    module, make_args, expected = OVERWRITES[name]
    args, kept = make_args(tmp_path)
    before = kept.read_bytes()
    line = one_error_line(__import__(module, fromlist=["main"]).main, args, capsys)
    assert line.startswith("error: ") and expected.format(t=tmp_path) in line
    assert kept.read_bytes() == before


@pytest.mark.parametrize("module, args, message", [
    ("data_prep.render", ["--page_timeout", "0"], "argument --page_timeout: must be a number > 0, got '0'"),
    ("data_prep.render", ["--shard_pages", "0"], "argument --shard_pages: must be a positive integer, got '0'"),
    ("data_prep.render", ["--workers", "nan"], "argument --workers: must be a positive integer, got 'nan'"),
    ("data_prep.split_pdfs", ["--workers", "0"], "argument --workers: must be a positive integer, got '0'"),
    ("data_prep.split_pdfs", ["--doc_timeout", "0"], "argument --doc_timeout: must be a number > 0, got '0'"),
    ("data_prep.build_splits", ["--test_fraction", "1.5"], "argument --test_fraction: must be a number in [0, 1]"),
    ("query_generation.generate", ["--max_retries", "-1"], "argument --max_retries: must be an integer >= 0, got '-1'"),
    ("query_generation.generate", ["--batch_size", "0"], "argument --batch_size: must be a positive integer, got '0'"),
    ("query_generation.filter", ["--judge_request_timeout", "inf"],
     "argument --judge_request_timeout: must be a number > 0, got 'inf'"),
    ("retriever.train", ["--learning_rate", "-1"], "argument --learning_rate: must be a number > 0, got '-1'"),
    ("retriever.train", ["--logging_steps", "0"], "argument --logging_steps: must be a positive integer, got '0'"),
    ("retriever.train", ["--lora_dropout", "2"], "argument --lora_dropout: must be a number in [0, 1], got '2'"),
    ("retriever.train", ["--matryoshka_dims", "64,0"],
     "argument --matryoshka_dims: must be a positive integer, got '0'"),
    ("retriever.train", ["--gc_memory_fraction", "1.5"], "argument --gc_memory_fraction: must be a number in (0, 1]"),
    ("retriever.train", ["--eval_page_store", "s"], "--eval_steps, --save_best and --eval_page_store need --eval_data"),
    ("retriever.mine", ["--batch_size", "0"], "argument --batch_size: must be a positive integer, got '0'"),
    ("retriever.mine", ["--shard_size", "0"], "argument --shard_size: must be a positive integer, got '0'"),
    ("retriever.mine", ["--hash_distance", "-2"], "argument --hash_distance: must be -1 (off) or a number of bits"),
    ("retriever.mine", ["--pool_depth", "0"], "argument --pool_depth: must be a positive integer, got '0'"),
    ("eval.retrieval", ["--batch_size", "0"], "argument --batch_size: must be a positive integer, got '0'"),
    ("eval.retrieval", ["--chunk_pages", "0"], "argument --chunk_pages: must be a positive integer, got '0'"),
    ("eval.retrieval", ["--depth", "5"], "--depth 5 is below the largest --k 100"),
    ("eval.image_text", ["--batch_size", "0"], "argument --batch_size: must be a positive integer, got '0'"),
    ("eval.image_text", ["--chunk_images", "0"], "argument --chunk_images: must be a positive integer, got '0'"),
    ("eval.image_text", ["--timeout", "0"], "argument --timeout: must be a number > 0, got '0'"),
    ("retriever.tiny", ["--dropout", "1.5"], "argument --dropout: must be a number in [0, 1], got '1.5'"),
])
def test_out_of_range_numbers_are_refused_by_argparse(module, args, message, tmp_path, capsys):
    required = {"data_prep.render": ["--pages", "p", "--out", "s"],
                "data_prep.split_pdfs": ["--pdfs", "x", "--out", "o"],
                "data_prep.build_splits": ["--pairs", "p", "--train", "a", "--test", "b"],
                "query_generation.generate": ["--store", "s", "--out", "o", "--model", "m"],
                "query_generation.filter": ["--queries", "q", "--out", "o", "--rejected", "r"],
                "retriever.train": ["--model_name_or_path", "m", "--output_dir", "o", "--train_data", "t"],
                "retriever.mine": ["--model", "m", "--train_data", "t", "--out", "o"],
                "eval.retrieval": ["--model", "m", "--tasks", "t", "--out", "o"],
                "eval.image_text": ["--model", "m", "--karpathy_json", "k", "--image_root", "i"],
                "retriever.tiny": ["--arch", "qwen2_vl", "--out", "o"]}[module]
    line = one_error_line(__import__(module, fromlist=["main"]).main, [*required, *args], capsys)
    assert f"error: {message}" in line


@pytest.mark.parametrize("module, make_args, expected", [
    ("eval.image_text", lambda t: ["--model", t / "m", "--karpathy_json", _bad_json(t), "--image_root", t, "--out",
                                   t / "locked" / "m.json"],
     "{t}/locked/m.json: --out: no permission to write in {t}/locked"),
    ("eval.retrieval", lambda t: ["--model", t / "m", "--tasks", t / "task", "--out", t / "locked"],
     "{t}/locked: --out: no permission to write it"),
    ("retriever.train", lambda t: ["--model_name_or_path", t / "m", "--output_dir", t / "locked" / "run",
                                   "--train_data", _bad_json(t)],
     "{t}/locked/run: --output_dir: no permission to write in {t}/locked"),
])
def test_an_output_where_this_user_may_not_write_is_one_line(module, make_args, expected, tmp_path, capsys,
                                                              monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))  # root
    line = one_error_line(__import__(module, fromlist=["main"]).main, make_args(tmp_path), capsys)
    assert expected.format(t=tmp_path) in line
