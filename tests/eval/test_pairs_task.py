"""A held-out pairs JSONL plus a page store is an evaluation task (what the quickstart evaluates on)."""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from data_prep.errors import InputError
from data_prep.store import PageStoreWriter
from eval.datasets import TaskSource, load_retrieval_data
from eval.retrieval import main as retrieval_main
from eval.tasks import load_task


@pytest.fixture()
def store_and_pairs(tmp_path):
    with PageStoreWriter(tmp_path / "store") as writer:
        for i in range(5):
            buffer = io.BytesIO()
            Image.new("RGB", (56, 56), (50 * i, 90, 200 - 40 * i)).save(buffer, format="PNG")
            writer.add(f"doc/{i + 1}", buffer.getvalue())
    pairs = tmp_path / "test.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"page {i}", "pos": [f"doc/{i}"]}) + "\n" for i in (1, 4)))
    return tmp_path / "store", pairs


def test_pairs_jsonl_task(store_and_pairs):
    store, pairs = store_and_pairs
    data = load_retrieval_data(str(pairs), page_store=store)
    assert data.name == "test"
    assert sorted(data.corpus_ids) == [f"doc/{i}" for i in range(1, 6)]
    assert data.queries == {"q0": "page 1", "q1": "page 4"}
    assert data.qrels == {"q0": {"doc/1": 1}, "q1": {"doc/4": 1}}
    assert data.load_images([0])[0].size == (56, 56)


def test_pairs_jsonl_task_needs_a_store(store_and_pairs):
    _, pairs = store_and_pairs
    with pytest.raises(ValueError, match="needs --page_store"):
        load_retrieval_data(str(pairs))


def test_load_task_takes_a_store_for_a_pairs_file_not_for_an_mteb_task(store_and_pairs):
    """The evaluation CLI and training's evaluation load tasks alike; the error names the caller's flag."""
    store, pairs = store_and_pairs
    task, subsets = load_task(TaskSource("test", str(pairs)), "test", str(store))
    assert task.metadata.name == "test" and list(subsets) == ["default"]
    assert subsets["default"].qrels == {"q0": {"doc/1": 1}, "q1": {"doc/4": 1}}
    mteb_task = TaskSource("Vidore2ESGReportsRetrieval", None, mteb=True)
    for flag in ("--page_store", "--eval_page_store"):
        with pytest.raises(InputError, match=f"^{flag} replaces the corpus of a BEIR folder or pairs file, not of "
                                             "the MTEB task Vidore2ESGReportsRetrieval$"):
            load_task(mteb_task, "test", str(store), flag)


def test_cli_on_pairs_task(tiny_model_dir, store_and_pairs, tmp_path):
    store, pairs = store_and_pairs
    retrieval_main(["--model", str(tiny_model_dir("qwen2_vl")), "--tasks", str(pairs), "--page_store", str(store),
                    "--out", str(tmp_path / "results"), "--k", "1,5"])
    metrics = json.loads((tmp_path / "results" / "test" / "metrics.json").read_text())
    assert metrics["aggregate"]["recall_at_5"] == pytest.approx(1.0), "5 pages, top 5: every positive is found"
    assert 0.0 <= metrics["aggregate"]["ndcg_at_1"] <= 1.0
