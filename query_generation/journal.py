"""The queries file as the journal of a resumable generation run.

Records of one page are contiguous, and each batch is appended with one write, flushed and fsynced. When a run
is killed (even ``kill -9``), the file can end in a torn line or with only part of its last page's records.
Opening the journal therefore cuts the torn line and then the whole last page (the only one that can be
incomplete); the run regenerates that page with its original batch, so the file ends byte-identical to an
uninterrupted run whenever decoding is deterministic (greedy, or a fixed seed). A batch that a full disk cuts
short is truncated away at once, so the file keeps complete pages only.

A file that is not a queries file (a line that is no JSON object with a ``page_id``) is refused before anything
is cut from it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from data_prep.errors import InputError, stop_on_full_disk
from data_prep.outputs import reopen_truncated

KEPT = "every complete page is kept; free space and run the same command again to resume"


def _page_ids(path: Path, lines: list[bytes]) -> list[str]:
    """The ``page_id`` of every complete line; ``InputError`` naming the line when one is not a query record."""
    ids = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("page_id"), str):
            raise InputError(f"{path}: line {number}: not a query record with a 'page_id' (--out must be the "
                             "queries file of query_generation.generate; give a new path to start a run)")
        ids.append(record["page_id"])
    return ids


class QueryJournal:
    """Append-only queries JSONL; ``done`` holds the pages whose records are complete."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self.path.read_bytes() if self.path.exists() else b""
        lines = data[:data.rfind(b"\n") + 1].splitlines(keepends=True)  # a torn last line is dropped
        ids = _page_ids(self.path, lines)
        last = len(ids)
        while last and ids[last - 1] == ids[-1]:  # the last page may be incomplete: cut it whole
            last -= 1
        if len(data) != sum(map(len, lines[:last])):
            os.truncate(self.path, sum(map(len, lines[:last])))
        self.done: set[str] = set(ids[:last])
        self.records = last
        self._fh = open(self.path, "ab")

    def append(self, records: list[dict[str, Any]]) -> None:
        """Write a batch's records (pages contiguous) in one write, then flush and fsync; on a full disk the
        partial batch is truncated away and ``DiskFullError`` raised."""
        if not records:
            return
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        start = self._fh.tell()
        with stop_on_full_disk(self.path, KEPT):
            try:
                self._fh.write(data)
                self._fh.flush()
                os.fsync(self._fh.fileno())
            except OSError:
                self._fh = reopen_truncated(self._fh, self.path, start)  # only whole pages stay in the file
                raise
        self.done.update(r["page_id"] for r in records)
        self.records += len(records)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> QueryJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
