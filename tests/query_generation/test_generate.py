"""query_generation.generate end to end with the transformers backend on tiny checkpoints: records, failures,
accounting, resume after kill -9 or a torn file, shards, bad input."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep.errors import InputError, MissingInputError
from query_generation.generators.hf_generate import TransformersGenerator
from query_generation.generate import build_parser, generate
from query_generation.prompt import GENERATION_SLOTS, JUDGE_SLOTS, PromptFile
from query_generation.provenance import settings_path
from tests.helpers.query_data import ANSWER, SHORT_PROMPT, make_store, teach_json_answer, write_pages_jsonl

from tests.helpers.paths import REPO_ROOT
from tests.helpers.tiny_models import GENERATIVE

PAGES = [f"doc{d}/{p}" for d in range(3) for p in (1, 2)]
MAX_NEW = 64  # the taught answer is 55 byte-level tokens


@pytest.fixture(scope="module")
def short_prompt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompt") / "short.txt"
    path.write_text(SHORT_PROMPT)
    return path


@pytest.fixture(scope="module")
def taught_model(tiny_model_dir, tmp_path_factory, short_prompt) -> Path:
    messages = PromptFile.load(short_prompt, GENERATION_SLOTS).messages("data:,", num_queries=1)
    return teach_json_answer(tiny_model_dir("qwen2_vl"), tmp_path_factory.mktemp("taught") / "m", messages, steps=40)


@pytest.fixture(scope="module")
def taught_backend(taught_model) -> TransformersGenerator:
    return TransformersGenerator(str(taught_model), "cpu")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("store") / "store", PAGES)


def args_for(store: Path, out: Path, model: Path, prompt: Path, *extra: str):
    return build_parser().parse_args([
        "--store", str(store), "--out", str(out), "--backend", "transformers", "--model", str(model),
        "--prompt", str(prompt), "--queries_per_page", "1", "--max_new_tokens", str(MAX_NEW),
        "--batch_size", "2", *extra])


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, store, taught_model, taught_backend, short_prompt) -> Path:
    out = tmp_path_factory.mktemp("ref") / "queries.jsonl"
    counts = generate(args_for(store, out, taught_model, short_prompt), taught_backend)
    assert counts == {"pages": 6, "with_queries": 6, "failed": 0, "queries": 6}
    return out


def test_records_carry_provenance(reference, taught_model, short_prompt):
    records = lines(reference)
    assert [r["page_id"] for r in records] == PAGES
    ident = PromptFile.load(short_prompt, GENERATION_SLOTS).ident
    for record in records:
        assert record == {"page_id": record["page_id"], "doc_id": record["page_id"].split("/")[0],
                          "query": ANSWER["queries"][0]["query"], "kind": "topical", "backend": "transformers",
                          "model": str(taught_model), "prompt": ident, "seed": 0}


@pytest.mark.parametrize("arch", GENERATIVE)
def test_every_family_generates(arch, tiny_model_dir, store, tmp_path, short_prompt, capsys):
    """Random weights write noise: every page is accounted for, failures keep the raw answer."""
    out = tmp_path / "q.jsonl"
    counts = generate(args_for(store, out, tiny_model_dir(arch), short_prompt, "--max_new_tokens", "6"))
    failures = lines(tmp_path / "q.failures.jsonl")
    assert counts["with_queries"] + counts["failed"] == counts["pages"] == len(PAGES)
    assert {f["id"] for f in failures} | {r["page_id"] for r in lines(out)} == set(PAGES)
    assert all(f["stage"] == "generate" and len(f["raw"]) == 1 and f["raw"][0] for f in failures)
    assert "6 pages seen = " in capsys.readouterr().out


def test_torn_or_partial_file_resumes_to_the_same_bytes(reference, tmp_path, store, taught_model, taught_backend,
                                                        short_prompt):
    data = reference.read_bytes()
    for cut in (len(data) // 2, len(data) - 1, data.index(b"\n") + 1):
        out = tmp_path / f"cut{cut}.jsonl"
        out.write_bytes(data[:cut])
        generate(args_for(store, out, taught_model, short_prompt), taught_backend)
        assert out.read_bytes() == data, cut


def test_shards_concatenate_to_the_unsharded_output(reference, tmp_path, store, taught_model, taught_backend,
                                                    short_prompt):
    parts = []
    for index in range(2):
        out = tmp_path / f"shard{index}.jsonl"
        generate(args_for(store, out, taught_model, short_prompt, "--num_shards", "2", "--shard_index", str(index)),
                 taught_backend)
        parts.append(out.read_bytes())
    assert parts[0] and parts[1]
    assert {r["page_id"] for r in lines(tmp_path / "shard0.jsonl")}.isdisjoint(
        r["page_id"] for r in lines(tmp_path / "shard1.jsonl"))
    assert b"".join(parts) == reference.read_bytes()


def test_kill_9_then_resume_gives_the_same_file(reference, tmp_path, store, taught_model, short_prompt):
    out = tmp_path / "killed.jsonl"
    argv = [sys.executable, "-m", "query_generation.generate", "--store", str(store), "--out", str(out),
            "--backend", "transformers", "--model", str(taught_model), "--prompt", str(short_prompt),
            "--queries_per_page", "1", "--max_new_tokens", str(MAX_NEW), "--batch_size", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (out.exists() and out.stat().st_size):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert out.read_bytes() != reference.read_bytes(), "the run finished before it was killed"
    subprocess.run(argv, cwd=REPO_ROOT, env=env, check=True, capture_output=True)
    assert out.read_bytes() == reference.read_bytes()


def test_unknown_and_undecodable_pages_are_failures(tmp_path, taught_model, taught_backend, short_prompt, capsys):
    store = make_store(tmp_path / "store", ["a/1", "a/2", "b/1"], broken=("a/2",))
    pages = write_pages_jsonl(tmp_path / "pages.jsonl", ["a/1", "a/2", "zz/9", "b/1"])
    out = tmp_path / "q.jsonl"
    counts = generate(args_for(store, out, taught_model, short_prompt, "--pages", str(pages)), taught_backend)
    assert counts == {"pages": 4, "with_queries": 2, "failed": 2, "queries": 2}
    reasons = {f["id"]: f["reason"] for f in lines(tmp_path / "q.failures.jsonl")}
    assert set(reasons) == {"a/2", "zz/9"}
    assert "page a/2: cannot decode" in reasons["a/2"] and "'zz/9' is not in page store" in reasons["zz/9"]
    again = generate(args_for(store, out, taught_model, short_prompt, "--pages", str(pages)), taught_backend)
    assert again == counts and len(lines(tmp_path / "q.failures.jsonl")) == 2
    # the journal's last page is always regenerated on resume (it may have been cut by a kill)
    assert "4 pages seen = 2 pages with queries + 2 pages failed (3 were done before this run)" in capsys.readouterr().out


def test_model_without_chat_template_is_refused(tiny_model_dir, tmp_path):
    model = shutil.copytree(tiny_model_dir("qwen2_vl"), tmp_path / "m")
    (model / "chat_template.jinja").unlink()
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=rf"{model}: the checkpoint has no chat template .* use the instruct"):
        TransformersGenerator(str(model), "cpu")
    with pytest.raises(MissingInputError, match=rf"{tmp_path / 'nowhere'} is neither a checkpoint directory"):
        TransformersGenerator(str(tmp_path / "nowhere"), "cpu")


@pytest.mark.parametrize("flags, message", [
    (("--samples_per_page", "2"), "--samples_per_page > 1 needs --temperature > 0 (greedy samples would be "
                                  "identical)"),
    (("--num_shards", "2", "--shard_index", "2"), "--shard_index must be in [0, --num_shards), got --shard_index 2 "
                                                  "with --num_shards 2 (shards are numbered from 0)")])
def test_contradicting_flags_are_refused_before_anything_runs(flags, message, tmp_path, short_prompt):
    out = tmp_path / "q.jsonl"
    with pytest.raises(InputError) as err:
        generate(args_for(tmp_path / "no_store", out, tmp_path / "no_model", short_prompt, *flags))
    assert str(err.value) == message and not out.exists()


def test_a_journal_is_not_resumed_with_other_settings(reference, tmp_path, store, taught_model, short_prompt):
    out = tmp_path / "queries.jsonl"
    out.write_bytes(reference.read_bytes())
    shutil.copy(settings_path(reference), settings_path(out))
    other_prompt = tmp_path / "other.txt"
    other_prompt.write_text(SHORT_PROMPT + "Be brief.\n")
    for flags, changed in [(("--max_new_tokens", "32"), rf"--max_new_tokens {MAX_NEW} \(this run: 32\)"),
                           (("--prompt", str(other_prompt)), r"--prompt 'short.txt@\w+' \(this run: 'other.txt@\w+'\)"),
                           (("--batch_size", "3"), r"--batch_size 2 \(this run: 3\)")]:
        with pytest.raises(InputError, match=rf"^{settings_path(out)}: queries file {out} was made with other settings "
                                             rf"than this run: {changed}; resuming would mix"):
            generate(args_for(store, out, taught_model, short_prompt, *flags))
    assert out.read_bytes() == reference.read_bytes() and not (tmp_path / "queries.failures.jsonl").exists()


def test_pages_list_of_another_store_is_refused(store, tmp_path, taught_model, short_prompt):
    pages = write_pages_jsonl(tmp_path / "pages.jsonl", ["zz/1", "zz/2"])
    with pytest.raises(InputError, match=rf"{pages}: none of its 2 pages is in page store {store} \(first: 'zz/1'\)"):
        generate(args_for(store, tmp_path / "q.jsonl", taught_model, short_prompt, "--pages", str(pages)))


def test_an_output_that_is_not_a_queries_file_is_refused_untouched(store, tmp_path, taught_model, short_prompt):
    out = tmp_path / "pairs.jsonl"
    out.write_text('{"page_id": "doc0/1", "query": "q"}\n{"query": "q", "pos": ["doc0/1"]}\n{"torn": ')
    before = out.read_bytes()
    with pytest.raises(InputError, match=rf"{out}: line 2: not a query record with a 'page_id' \(--out must be"):
        generate(args_for(store, out, taught_model, short_prompt))
    assert out.read_bytes() == before


@pytest.mark.parametrize("text, slots, message", [
    ("Write {num_queries} queries.", GENERATION_SLOTS, r"missing slot\(s\) \{image\} .*; add them to the text"),
    ("{image} {image} {num_queries}", GENERATION_SLOTS, r"\{image\} must appear exactly once, found 2"),
    ("{image} Is {query} self-contained?", JUDGE_SLOTS, r"has an \{image\} slot, but this prompt is sent without"),
])
def test_bad_prompt_files_are_named(text, slots, message, tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text(text)
    with pytest.raises(InputError, match=rf"prompt file {path}: {message}"):
        PromptFile.load(path, slots)
    with pytest.raises(MissingInputError, match=rf"prompt file {tmp_path / 'none.txt'} does not exist"):
        PromptFile.load(tmp_path / "none.txt", slots)
