"""Parsing a model's answer into queries.

Accepted answers (the first JSON value in the text that has one of these shapes wins):

* ``{"queries": [{"query": str, "kind": str}, ...]}`` (the format the prompts ask for; a ``kind`` may be absent,
  entries may also be bare strings);
* a bare JSON list of strings, or of ``{"query": ...}`` objects;

either alone, inside a Markdown code fence (```json ... ```), or surrounded by prose. Anything else raises
:class:`ParseError`; the caller records the page as failed with the raw text. So does JSON nested deeper than the
decoder allows (Python's recursion limit, about 1000 levels): such an answer is never searched further.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_DECODER = json.JSONDecoder()

QUERIES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"queries": {"type": "array", "items": {
        "type": "object",
        "properties": {"query": {"type": "string"}, "kind": {"type": "string"}},
        "required": ["query", "kind"]}}},
    "required": ["queries"],
}


class ParseError(ValueError):
    """The answer holds no JSON value of an accepted shape."""


@dataclass(frozen=True)
class Query:
    text: str
    kind: str | None


def _entries(value: Any) -> list[Any] | None:
    """The list of query entries of an accepted shape, else None."""
    if isinstance(value, dict) and isinstance(value.get("queries"), list):
        return value["queries"]
    if isinstance(value, list) and value and all(isinstance(v, (str, dict)) for v in value):
        return value
    return None


def _query(entry: Any) -> Query | None:
    if isinstance(entry, str):
        return Query(" ".join(entry.split()), None) if entry.strip() else None
    if isinstance(entry, dict) and isinstance(entry.get("query"), str) and entry["query"].strip():
        kind = entry.get("kind")
        return Query(" ".join(entry["query"].split()), kind.strip() if isinstance(kind, str) else None)
    return None


def _json_values(text: str):
    """Every JSON object or array that starts somewhere in ``text``, in order of position."""
    for match in re.finditer(r"[\[{]", text):
        try:
            yield _DECODER.raw_decode(text, match.start())[0]
        except json.JSONDecodeError:
            continue
        except RecursionError:  # each later start would nest as deep: stop at the first
            raise ParseError("the answer nests JSON deeper than the decoder allows") from None


def parse_queries(text: str, limit: int | None = None) -> list[Query]:
    """The queries of an answer (at most ``limit``); ``ParseError`` when it has none in an accepted shape."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for candidate in candidates:
        for value in _json_values(candidate):
            entries = _entries(value)
            if entries is None:
                continue
            queries = [q for q in map(_query, entries) if q is not None]
            if queries:
                return queries[:limit]
            if entries == [] or isinstance(value, dict):
                raise ParseError("the answer's query list is empty")
    raise ParseError("no JSON object with 'queries' nor JSON list of queries in the answer")
