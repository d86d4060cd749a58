"""``python -m query_generation.from_text``: queries from a page's own text layer, no model needed.

For every page of a ``pages.jsonl`` listed with ``--with_text``, one sentence of the page (chosen deterministically
per seed among those with at least ``--min_words`` words) becomes its query. This is the cheap baseline and the
quickstart's source of pairs; VLM-generated questions are the real thing. Pages without a usable sentence are
counted and skipped (they are usually scans or figures, which only a VLM can ask about).
"""
from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path
from typing import IO, Sequence

from tqdm import tqdm

from data_prep.errors import InputError, cli
from data_prep.jsonl import iter_jsonl
from data_prep.flags import positive_int
from data_prep.outputs import atomic_output, check_outputs
from query_generation.query_rules import word_count

_SENTENCE = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])")  # Chinese / Japanese full stops need no space


def sentences(text: str, min_words: int, max_words: int) -> list[str]:
    """Sentences of a page's text with a word count in ``[min_words, max_words]``, whitespace normalised."""
    flat = " ".join(text.split())
    found = (s.strip() for s in _SENTENCE.split(flat))
    return [s for s in found if min_words <= word_count(s) <= max_words]


def pair_for_page(record: dict, rng: random.Random, min_words: int, max_words: int) -> dict | None:
    """One training pair for a page record of pages.jsonl, or None when its text has no usable sentence."""
    candidates = sentences(record.get("text") or "", min_words, max_words)
    if not candidates:
        return None
    return {"query": rng.choice(candidates), "pos": [record["id"]], "neg": [], "source": "text_layer",
            "doc_id": record.get("doc_id")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m query_generation.from_text", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", required=True, help="pages.jsonl written by data_prep.split_pdfs --with_text")
    parser.add_argument("--out", required=True, help="pairs JSONL ({'query', 'pos', 'neg', 'source', 'doc_id'})")
    parser.add_argument("--min_words", type=positive_int, default=5)
    parser.add_argument("--max_words", type=positive_int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    return parser


@cli
def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    check_outputs({"--out": args.out}, {"--pages": args.pages})
    if args.min_words > args.max_words:
        raise InputError(f"--min_words {args.min_words} is more than --max_words {args.max_words}: no sentence "
                         "could be a query")
    out = Path(args.out)
    with atomic_output(out, f"{out} was not replaced; free space and run the same command again") as handle:
        written, skipped = write_pairs(args, handle)
    print(f"{written} pairs written to {out}; {skipped} pages had no sentence of {args.min_words}-{args.max_words} "
          "words")


def write_pairs(args: argparse.Namespace, handle: IO[bytes]) -> tuple[int, int]:
    """One pair per page with a usable sentence, written to the binary ``handle``; returns (written, skipped)."""
    rng = random.Random(args.seed)
    written = skipped = 0
    for number, record in tqdm(iter_jsonl(args.pages), desc="queries from text", unit="page"):
        if "id" not in record:
            raise InputError(f"{args.pages}: line {number}: no 'id' field (write pages.jsonl with "
                             "data_prep.split_pdfs)")
        pair = pair_for_page(record, rng, args.min_words, args.max_words)
        if pair is None:
            skipped += 1
            continue
        handle.write((json.dumps(pair, ensure_ascii=False) + "\n").encode("utf-8"))
        written += 1
    return written, skipped

if __name__ == "__main__":
    main()
