"""The queries file as the journal of a resumable generation run.

Records of one page are contiguous, and each batch is appended with one write, flushed and fsynced. When a run
is killed (even ``kill -9``), the file can end in a torn line or with only part of its last page's records.
Opening the journal therefore cuts the torn line and then the whole last page (the only one that can be
incomplete); the run regenerates that page with its original batch, so the file ends byte-identical to an
uninterrupted run whenever decoding is deterministic (greedy, or a fixed seed).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from data_prep.failures import truncate_torn_line
from data_prep.jsonl import iter_jsonl


def _last_page_start(path: Path) -> int:
    """Byte offset where the records of the file's last page begin (0 for an empty file)."""
    start, last_page, offset = 0, None, 0
    with open(path, "rb") as fh:
        for line in fh:
            page = json.loads(line)["page_id"]
            if page != last_page:
                start, last_page = offset, page
            offset += len(line)
    return start


class QueryJournal:
    """Append-only queries JSONL; ``done`` holds the pages whose records are complete."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_torn_line(self.path)
        if self.path.exists() and self.path.stat().st_size:
            os.truncate(self.path, _last_page_start(self.path))
        self.done: set[str] = set()
        self.records = 0
        if self.path.exists():
            for number, record in iter_jsonl(self.path):
                if "page_id" not in record:
                    raise ValueError(f"{self.path}: line {number}: no 'page_id' (not a queries file?)")
                self.done.add(record["page_id"])
                self.records += 1
        self._fh = open(self.path, "a", encoding="utf-8")

    def append(self, records: list[dict[str, Any]]) -> None:
        """Write a batch's records (pages contiguous) in one write, then flush and fsync."""
        if not records:
            return
        self._fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.done.update(r["page_id"] for r in records)
        self.records += len(records)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> QueryJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
