"""build_splits: no page or document on both sides, deterministic per seed, per-source counts, clear errors."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from data_prep.build_splits import build_splits, main, read_pairs
from tests.helpers.cli import one_error_line


def _pairs(n: int = 400, seed: int = 0) -> list[dict]:
    """Pairs with shared pages, shared documents and negatives that chain pairs together."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        source = rng.choice(["docvqa", "slidevqa", "chartqa"])
        doc = rng.randrange(60)
        pos = [f"{source}/d{doc}/{rng.randrange(4)}"]
        neg = [f"{source}/d{rng.randrange(60)}/{rng.randrange(4)}"] if rng.random() < 0.1 else []
        out.append({"query": f"q{i}", "pos": pos, "neg": neg, "source": source, "doc_id": f"{source}/d{doc}"})
    return out


def _write(path, pairs):
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return path


def _pages_docs(path):
    recs = read_pairs([path])
    return ({p for r in recs for p in r["pos"] + r["neg"]}, {r["doc_id"] for r in recs}, recs)


def test_no_page_or_document_shared_and_counts(tmp_path):
    src = _write(tmp_path / "pairs.jsonl", _pairs())
    counts = build_splits([src], tmp_path / "train.jsonl", tmp_path / "test.jsonl", test_fraction=0.2, seed=3)
    tr_pages, tr_docs, tr = _pages_docs(tmp_path / "train.jsonl")
    te_pages, te_docs, te = _pages_docs(tmp_path / "test.jsonl")
    assert not tr_pages & te_pages and not tr_docs & te_docs
    assert len(tr) + len(te) == 400 and sorted(r["query"] for r in tr + te) == sorted(f"q{i}" for i in range(400))
    assert counts["total"] == {"train": len(tr), "test": len(te)}
    for source in ("docvqa", "slidevqa", "chartqa"):
        n = sum(counts[source].values())
        assert counts[source]["test"] == sum(r["source"] == source for r in te)
        assert 0.1 * n <= counts[source]["test"] <= 0.45 * n  # components are coarse, but near the target


def test_deterministic_per_seed(tmp_path):
    src = _write(tmp_path / "pairs.jsonl", _pairs())
    outs = []
    for run, seed in enumerate((1, 1, 2)):
        build_splits([src], tmp_path / f"tr{run}.jsonl", tmp_path / f"te{run}.jsonl", seed=seed)
        outs.append((tmp_path / f"te{run}.jsonl").read_text())
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_cli_and_bad_line(tmp_path):
    src = _write(tmp_path / "pairs.jsonl", _pairs(50))
    out = subprocess.run([sys.executable, "-m", "data_prep.build_splits", "--pairs", str(src), "--train",
                          str(tmp_path / "tr.jsonl"), "--test", str(tmp_path / "te.jsonl"), "--test_per_source", "3",
                          "--report", str(tmp_path / "r.json")], capture_output=True, text=True, check=True)
    assert "total" in out.stdout and json.loads((tmp_path / "r.json").read_text())["total"]["test"] >= 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a", "pos": ["x"]}\n{"query": "b", "pos": []}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2: a pair needs"):
        read_pairs([bad])


def test_a_split_without_train_pairs_is_an_error_and_writes_nothing(tmp_path, capsys):
    one_doc = [{"query": f"q{i}", "pos": [f"d/{i}"], "neg": [], "doc_id": "d"} for i in range(5)]
    src = _write(tmp_path / "pairs.jsonl", one_doc)
    line = one_error_line(main, ["--pairs", src, "--train", tmp_path / "tr.jsonl", "--test", tmp_path / "te.jsonl",
                                 "--test_fraction", "0.5"], capsys)
    assert line == (f"error: no train pairs: all 5 pairs of {src} went to the test split (pairs sharing a document or "
                    "a page stay together); nothing to train on: lower --test_fraction or --test_per_source, or give "
                    "more pairs")
    assert not (tmp_path / "tr.jsonl").exists() and not (tmp_path / "te.jsonl").exists()
