"""Reading and writing TREC run files and qrels (TREC or BEIR TSV).

Formats
-------
* run: ``qid Q0 docid rank score tag`` per line, whitespace separated (trec_eval's input). Ranks are kept
  only as written; scoring, like trec_eval, orders by score (ties by docid, descending).
* qrels: TREC ``qid iter docid rel`` (whitespace), or BEIR TSV ``query-id<TAB>corpus-id<TAB>score`` whose first
  line is that header. The format is detected from the first non-empty line.

Ids in TREC files (run and TREC qrels) are percent-encoded where they would break the whitespace-separated
fields: ``%`` and every whitespace character (what ``str.split()`` splits on) become the ``%XX`` escapes of their
UTF-8 bytes on write (``a b`` -> ``a%20b``, ``50%`` -> ``50%25``), and exactly those escapes are decoded on read, so
any id round-trips and ids without whitespace or ``%`` are written as they are. Other ``%XX`` sequences (``a%2Fb``
from a URL-quoted file name) are read as written. BEIR TSV qrels are tab-separated and read literally.

A line that does not parse raises :class:`FormatError` naming the file and the 1-based line number.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from data_prep.errors import InputError, iter_text_lines
from data_prep.outputs import write_text_atomic

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]

__all__ = ["FormatError", "Qrels", "Run", "decode_id", "encode_id", "read_qrels", "read_run", "write_run"]

# '%' and the characters str.split() separates fields on (every code point whose str.isspace() is true)
_ESCAPED = ("%\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
            "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_ENCODE = str.maketrans({c: quote(c, safe="") for c in _ESCAPED})
_DECODE = {quote(c, safe=""): c for c in _ESCAPED}
_ESCAPE = re.compile("|".join(sorted(_DECODE, key=len, reverse=True)), re.IGNORECASE)


class FormatError(InputError):
    """A run or qrels line that does not parse; the message names the file and line."""


def encode_id(text: str) -> str:
    """``text`` as one TREC field: ``%`` and whitespace percent-encoded, everything else unchanged."""
    return text.translate(_ENCODE)


def decode_id(field: str) -> str:
    """The id an :func:`encode_id` field stands for (only the escapes of ``%`` and whitespace are decoded)."""
    return _ESCAPE.sub(lambda match: _DECODE[match.group().upper()], field) if "%" in field else field


def read_run(path: str | Path) -> Run:
    """Parse a TREC run file into ``{qid: {docid: score}}``; a repeated (qid, docid) pair is an error."""
    run: Run = {}
    for lineno, line in iter_text_lines(path, "run file"):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 6:
            raise FormatError(f"{path}:{lineno}: expected 6 fields 'qid Q0 docid rank score tag', got {len(fields)}")
        qid, docid, rank, score = decode_id(fields[0]), decode_id(fields[2]), fields[3], fields[4]
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
    for lineno, line in iter_text_lines(path, "qrels file"):
        if not line.strip():
            continue
        if beir is None:
            beir = line.split("\t")[0].strip() == "query-id"
            if beir:
                continue
        qid, docid, rel = _qrels_row(f"{path}:{lineno}", line, beir)
        try:
            qrels.setdefault(qid, {})[docid] = int(float(rel))
        except ValueError:
            raise FormatError(f"{path}:{lineno}: relevance {rel!r} is not a number") from None
    return qrels


def _qrels_row(where: str, line: str, beir: bool) -> tuple[str, str, str]:
    """(qid, docid, relevance text) of one qrels line: BEIR TSV fields literally, TREC fields decoded."""
    fields = line.rstrip("\n").split("\t") if beir else line.split()
    if len(fields) != (3 if beir else 4):
        expected = "query-id<TAB>corpus-id<TAB>score" if beir else "qid iter docid rel"
        raise FormatError(f"{where}: expected '{expected}', got {line.strip()!r}")
    if beir:
        return fields[0].strip(), fields[1].strip(), fields[2]
    return decode_id(fields[0]), decode_id(fields[2]), fields[3]


def write_run(path: str | Path, run: Mapping[str, Mapping[str, float]], tag: str = "vlmret") -> None:
    """Write ``{qid: {docid: score}}`` as a TREC run, each query ranked by score (ties: docid descending), ids and
    tag encoded by :func:`encode_id` (an empty tag is written as ``vlmret``); all or nothing (a full disk raises
    ``DiskFullError`` and leaves the previous file)."""
    tag = encode_id(tag) or "vlmret"
    lines = []
    for qid, docs in run.items():
        ranked = sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)
        lines += [f"{encode_id(qid)} Q0 {encode_id(docid)} {rank} {score!r} {tag}\n"
                  for rank, (docid, score) in enumerate(ranked, start=1)]
    write_text_atomic(path, "".join(lines))
