"""The learnable corpus (``data_prep.sample_pdfs --kind titles``): every page's title is its query, no two pages
share a title, only the page image shows it, and a corpus larger than the vocabulary allows is one error line."""
from __future__ import annotations

import json
from pathlib import Path

import pymupdf

from data_prep import sample_pdfs, split_pdfs
from data_prep.sample_pdfs import TITLE_WORDS
from query_generation.from_text import main as from_text
from tests.helpers.cli import one_error_line


def _titles_corpus(out: Path, *extra: str) -> list[dict]:
    sample_pdfs.main(["--kind", "titles", "--out", str(out / "pdfs"), "--docs", "6", "--pages", "3", "--vocabulary",
                      "8", "--title_words", "3", *extra])
    split_pdfs.main(["--pdfs", str(out / "pdfs"), "--out", str(out / "pages.jsonl"), "--with_text"])
    from_text(["--pages", str(out / "pages.jsonl"), "--out", str(out / "pairs.jsonl"), "--min_words", "3",
               "--max_words", "3"])
    return [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]


def test_each_page_has_a_distinct_title_that_is_its_only_query(tmp_path: Path) -> None:
    pairs = _titles_corpus(tmp_path)
    assert len(pairs) == 18  # every page, one query each: the distractor sentences are longer than 3 words
    titles = [pair["query"].rstrip(".").split() for pair in pairs]
    assert all(len(words) == 3 and set(words) <= set(TITLE_WORDS[:8]) for words in titles)
    assert len({frozenset(words) for words in titles}) == 18
    for pair in pairs:  # the id names the file and page number, never a title word
        assert not set(pair["pos"][0].upper().replace("/", " ").split()) & set(TITLE_WORDS)


def test_the_title_is_drawn_large_above_the_small_text(tmp_path: Path) -> None:
    _titles_corpus(tmp_path)
    page = pymupdf.open(tmp_path / "pdfs" / "titles_001.pdf")[0]
    sizes = {span["text"].strip(" ."): span["size"] for block in page.get_text("dict")["blocks"]
             for line in block.get("lines", []) for span in line["spans"]}
    title = [word for word, size in sizes.items() if size == 64]
    assert len(title) == 3 and all(size == 9 for word, size in sizes.items() if word not in title)


def test_the_same_seed_writes_the_same_corpus(tmp_path: Path) -> None:
    first, second = _titles_corpus(tmp_path / "a"), _titles_corpus(tmp_path / "b")
    assert [p["query"] for p in first] == [p["query"] for p in second]
    assert [p["query"] for p in _titles_corpus(tmp_path / "c", "--seed", "1")] != [p["query"] for p in first]


def test_more_pages_than_distinct_titles_is_one_error_line(tmp_path: Path, capsys) -> None:
    line = one_error_line(sample_pdfs.main, ["--kind", "titles", "--out", tmp_path / "pdfs", "--docs", "30",
                                             "--pages", "2", "--vocabulary", "6", "--title_words", "2"], capsys)
    assert line == ("error: --docs x --pages = 60 pages need 60 distinct titles, but 6 words make only 15 sets of 2: "
                    "raise --vocabulary or --title_words, or write fewer pages")
    assert not (tmp_path / "pdfs").exists()
