"""Failures log: an append-only JSONL of what could not be processed, one record per page (or per document).

Each record is ``{"id": page id or null, "doc": doc id, "source": path, "page": 1-based page or null,
"stage": "split" | "render" | ..., "reason": str}``. Records are written through
:class:`data_prep.outputs.JsonlAppender` with an fsync per line, so a killed job keeps every failure it reported,
a line torn by ``kill -9`` is dropped (and truncated away) when the log is reopened, and a full disk stops the job
with one line naming the log. Resuming jobs read the log to skip pages that already failed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from data_prep.errors import InputError
from data_prep.outputs import JsonlAppender


def read_failures(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete records of a failures log (missing file -> ``[]``; a torn last line is ignored)."""
    p = Path(path)
    if not p.exists():
        return []
    records = []
    with open(p, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.endswith(b"\n"):
                break  # torn by a kill: the writer re-reports that page on resume
            records.append(_record(p, number, raw))
    return records


def _record(path: Path, number: int, raw: bytes) -> dict[str, Any]:
    try:
        record = json.loads(raw)
    except ValueError:  # not JSON, or not UTF-8
        record = None
    if not isinstance(record, dict) or "reason" not in record:
        raise InputError(f"{path}: line {number}: not a failure record (the failures log is read to skip the pages "
                         "that failed before; give a new --failures path, or the log an earlier run wrote)")
    return record


class FailureLog:
    """Appends failure records durably; ``failed_ids`` holds the page ids already in the log."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.records = read_failures(self.path)  # before anything is cut from a file that is not a failures log
        self._out = JsonlAppender(self.path, fsync=True)  # drops a torn last line
        self.failed_ids = {r["id"] for r in self.records if r.get("id")}

    def add(self, reason: str, *, stage: str, doc: str, source: str, page: int | None = None,
            page_id: str | None = None, extra: dict[str, Any] | None = None) -> None:
        """Append one record; ``extra`` adds fields (the raw model answer of a page that failed to parse, say)."""
        rec = {"id": page_id, "doc": doc, "source": source, "page": page, "stage": stage, "reason": reason,
               **(extra or {})}
        self._out.write(rec)
        self.records.append(rec)
        if page_id:
            self.failed_ids.add(page_id)

    def close(self) -> None:
        self._out.close()

    def __enter__(self) -> "FailureLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
