"""Reading and writing TREC run files and qrels (TREC or BEIR TSV).

Formats
-------
* run: ``qid Q0 docid rank score tag`` per line, whitespace separated (trec_eval's input). Ranks are kept
  only as written; scoring, like trec_eval, orders by score (ties by docid, descending).
* qrels: TREC ``qid iter docid rel`` (whitespace), or BEIR TSV ``query-id<TAB>corpus-id<TAB>score`` whose first
  line is that header. The format is detected from the first non-empty line.

A line that does not parse raises :class:`FormatError` naming the file and the 1-based line number.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from data_prep.errors import InputError, open_input
from data_prep.outputs import write_text_atomic

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]

__all__ = ["FormatError", "Qrels", "Run", "read_qrels", "read_run", "write_run"]


class FormatError(InputError):
    """A run or qrels line that does not parse; the message names the file and line."""


def read_run(path: str | Path) -> Run:
    """Parse a TREC run file into ``{qid: {docid: score}}``; a repeated (qid, docid) pair is an error."""
    run: Run = {}
    with open_input(path, "run file") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 6:
                raise FormatError(f"{path}:{lineno}: expected 6 fields 'qid Q0 docid rank score tag', got {len(fields)}")
            qid, _, docid, rank, score, _ = fields
            try:
                int(rank)
                value = float(score)
            except ValueError:
                raise FormatError(f"{path}:{lineno}: rank {rank!r} / score {score!r} is not a number") from None
            docs = run.setdefault(qid, {})
            if docid in docs:
                raise FormatError(f"{path}:{lineno}: document {docid!r} appears twice for query {qid!r}")
            docs[docid] = value
    return run


def read_qrels(path: str | Path) -> Qrels:
    """Parse TREC (``qid 0 docid rel``) or BEIR TSV (header ``query-id corpus-id score``) qrels."""
    qrels: Qrels = {}
    beir = None
    with open_input(path, "qrels file") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if beir is None:
                beir = line.split("\t")[0].strip() == "query-id"
                if beir:
                    continue
            fields = line.rstrip("\n").split("\t") if beir else line.split()
            if len(fields) != (3 if beir else 4):
                expected = "query-id<TAB>corpus-id<TAB>score" if beir else "qid iter docid rel"
                raise FormatError(f"{path}:{lineno}: expected '{expected}', got {line.strip()!r}")
            qid, docid, rel = (fields[0], fields[1], fields[2]) if beir else (fields[0], fields[2], fields[3])
            try:
                qrels.setdefault(qid.strip(), {})[docid.strip()] = int(float(rel))
            except ValueError:
                raise FormatError(f"{path}:{lineno}: relevance {rel!r} is not a number") from None
    return qrels


def write_run(path: str | Path, run: Mapping[str, Mapping[str, float]], tag: str = "vlmret") -> None:
    """Write ``{qid: {docid: score}}`` as a TREC run, each query ranked by score (ties: docid descending); all or
    nothing (a full disk raises ``DiskFullError`` and leaves the previous file)."""
    lines = []
    for qid, docs in run.items():
        ranked = sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)
        lines += [f"{qid} Q0 {docid} {rank} {score!r} {tag}\n" for rank, (docid, score) in enumerate(ranked, start=1)]
    write_text_atomic(path, "".join(lines))
