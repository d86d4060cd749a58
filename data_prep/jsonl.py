"""JSON-lines input with errors that name the file and the line: the one reader every JSONL input goes through."""
from __future__ import annotations

import json
import os
from typing import Any, Iterator

from data_prep.errors import InputError, open_input


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line; ``InputError`` (a ``ValueError``) naming file and line
    otherwise, ``MissingInputError`` when the file does not exist."""
    with open_input(path, "JSONL file") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}: line {lineno}: invalid JSON: {e.msg}") from None
            if not isinstance(rec, dict):
                raise InputError(f"{path}: line {lineno}: expected a JSON object")
            yield lineno, rec
