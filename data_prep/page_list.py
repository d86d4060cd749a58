"""Page lists (``pages.jsonl``): one JSON line per PDF page, the contract between split_pdfs and render.

Line fields: ``id`` (page id), ``doc_id``, ``page`` (1-based), ``source`` (absolute PDF path), ``relpath`` (path
relative to the input root, used for password-map lookups), ``sha256`` (of the PDF), ``width`` / ``height``
(points, after page rotation; ``null`` when an encrypted page could not be measured) and, with ``--with_text``,
``text`` (the page's text layer).

Page ids are ``"<doc_id>/<page>"``. The default doc id is the PDF's path relative to the input root, without the
``.pdf`` suffix, with ``/`` separators (``reports/2023/a.pdf`` page 3 -> ``reports/2023/a/3``): readable and stable
while the tree does not move. ``--id_scheme sha256`` uses the first 16 hex digits of the file's sha256 instead,
stable across renames and identical for duplicate files.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from data_prep.errors import InputError, MissingInputError, iter_text_lines
from data_prep.jsonl import iter_jsonl

REQUIRED = ("id", "doc_id", "page", "source")


def make_doc_id(relpath: str, sha256: str, scheme: str = "path") -> str:
    if scheme == "sha256":
        return sha256[:16]
    if scheme != "path":
        raise ValueError(f"unknown id scheme {scheme!r} (path | sha256)")
    return relpath[:-4] if relpath.lower().endswith(".pdf") else relpath


def page_id(doc_id: str, page: int) -> str:
    return f"{doc_id}/{page}"


def read_pages(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read and validate a page list: clear error naming file and line for bad JSON, missing fields, duplicates."""
    seen: dict[str, int] = {}
    out = []
    for lineno, rec in iter_jsonl(path):
        missing = [k for k in REQUIRED if k not in rec]
        if missing:
            raise InputError(f"{path}: line {lineno}: missing field(s) {missing} (not a page list: write it with "
                             "data_prep.split_pdfs)")
        if not isinstance(rec["page"], int) or rec["page"] < 1:
            raise InputError(f"{path}: line {lineno}: 'page' must be a 1-based integer, got {rec['page']!r}")
        if rec["id"] in seen:
            raise InputError(f"{path}: line {lineno}: duplicate page id {rec['id']!r} "
                             f"(first on line {seen[rec['id']]})")
        seen[rec["id"]] = lineno
        out.append(rec)
    return out


def find_pdfs(inputs: list[str]) -> list[tuple[Path, str]]:
    """Expand inputs to ``(absolute path, relpath)`` pairs, sorted and de-duplicated.

    A directory is walked recursively for ``*.pdf`` (any case), relpaths relative to it. A file ending in ``.pdf``
    is taken as is (relpath: its name). Any other file is a list of PDF paths, one per line (``#`` comments
    allowed; relative paths are relative to the list's folder, and relpaths are the paths as written).
    """
    found: dict[Path, str] = {}
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for q in sorted(p.rglob("*")):
                if q.is_file() and q.suffix.lower() == ".pdf":
                    found.setdefault(q.resolve(), q.relative_to(p).as_posix())
        elif p.suffix.lower() == ".pdf":
            if not p.exists():
                raise MissingInputError(f"PDF not found: {p}")
            found.setdefault(p.resolve(), p.name)
        elif p.is_file():
            for lineno, line in iter_text_lines(p, "list of PDF paths"):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                q = Path(line) if Path(line).is_absolute() else p.parent / line
                if not q.is_file():
                    raise MissingInputError(f"{p}: line {lineno}: PDF not found: {q}")
                found.setdefault(q.resolve(), Path(line).as_posix().lstrip("/"))
        else:
            raise MissingInputError(f"input not found: {p} (a folder of PDFs, a .pdf file or a list of PDF paths)")
    return sorted(found.items(), key=lambda kv: kv[1])
