"""JSON-lines input with errors that name the file and the line: the one reader every JSONL input goes through."""
from __future__ import annotations

import json
import os
from typing import Any, Iterator

from data_prep.errors import InputError, iter_text_lines


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line; ``InputError`` (a ``ValueError``) naming file and line
    otherwise (also for a line that is not UTF-8), ``MissingInputError`` when the file does not exist."""
    for lineno, line in iter_text_lines(path, "JSONL file"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: line {lineno}: invalid JSON: {e.msg}") from None
        if not isinstance(rec, dict):
            raise InputError(f"{path}: line {lineno}: expected a JSON object")
        yield lineno, rec
