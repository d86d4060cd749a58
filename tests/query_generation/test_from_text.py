"""Queries from a page's text layer, on sample PDFs listed by data_prep.split_pdfs."""
from __future__ import annotations

import json
import subprocess
import sys

from query_generation.from_text import main as from_text, sentences
from tests.helpers.cli import one_error_line


def test_sentences_filter_by_length():
    text = "Short one. This sentence has exactly seven words here! Another\nline with   spacing is fine?"
    assert sentences(text, 5, 10) == ["This sentence has exactly seven words here!", "Another line with spacing is fine?"]


def test_chinese_sentences_end_at_their_full_stops():
    text = "这是第一句话。这是第二句，比较长一些！Short one. Another English sentence here."
    assert sentences(text, 3, 40) == ["这是第一句话。", "这是第二句，比较长一些！", "Another English sentence here."]


def test_sample_pdfs_to_pairs(tmp_path):
    subprocess.run([sys.executable, "-m", "data_prep.sample_pdfs", "--out", str(tmp_path / "pdfs"), "--docs", "2",
                    "--pages", "3"], check=True)
    subprocess.run([sys.executable, "-m", "data_prep.split_pdfs", "--pdfs", str(tmp_path / "pdfs"), "--out",
                    str(tmp_path / "pages.jsonl"), "--with_text"], check=True)
    from_text(["--pages", str(tmp_path / "pages.jsonl"), "--out", str(tmp_path / "pairs.jsonl")])
    pages = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "pages.jsonl").read_text().splitlines()}
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == len(pages) == 6
    for pair in pairs:
        (page,) = pair["pos"]
        assert pair["query"] in " ".join(pages[page]["text"].split())


def test_word_bounds_that_keep_nothing_are_refused(tmp_path, capsys):
    line = one_error_line(from_text, ["--pages", tmp_path / "pages.jsonl", "--out", tmp_path / "pairs.jsonl",
                                      "--min_words", "9", "--max_words", "3"], capsys)
    assert line == "error: --min_words 9 is more than --max_words 3: no sentence could be a query"
    assert not (tmp_path / "pairs.jsonl").exists()
