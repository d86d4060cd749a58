"""List the pages of many PDFs: ``python -m data_prep.split_pdfs --pdfs DIR_OR_LIST --out pages.jsonl``.

Walks folders recursively (see ``data_prep.pages.find_pdfs``), hashes each PDF, counts and measures its pages and
optionally extracts each page's text layer (``--with_text``, for query generation). Documents are independent, so
they are processed by a process pool (``--workers``), in sorted order; output is deterministic.

Encrypted PDFs are listed from their page count even without a password (sizes are ``null`` then) so that render
records each of their pages as failed -- or renders them when its password map has the password. Files that cannot
be listed at all (zero bytes, not a PDF, broken beyond repair, zero pages) go to the failures log
(``--failures``, default ``<out>.failures.jsonl``) with the reason; pages listed + documents failed is printed.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_prep.failures import FailureLog
from data_prep.pages import find_pdfs, make_doc_id, page_id
from data_prep.pdf import PdfError, load_passwords, open_pdf, password_for, sha256_file

_PASSWORDS: dict[str, str] = {}


def _init(passwords: dict[str, str]) -> None:
    global _PASSWORDS
    _PASSWORDS = passwords


def list_document(path: Path, relpath: str, id_scheme: str, with_text: bool) -> tuple[list[dict], str | None]:
    """Page records of one PDF, or ``([], reason)`` when it cannot be listed."""
    sha = sha256_file(path)
    doc_id = make_doc_id(relpath, sha, id_scheme)
    base = {"doc_id": doc_id, "source": str(path), "relpath": relpath, "sha256": sha}
    pw = password_for(_PASSWORDS, relpath, sha)
    try:
        doc = open_pdf(path, pw)
        locked = False
    except PdfError as e:
        if not str(e).startswith("encrypted"):
            return [], str(e)
        import pymupdf

        doc, locked = pymupdf.open(path, filetype="pdf"), True  # count pages; render records the failure
    with doc:
        n = doc.page_count
        if n == 0:
            return [], "zero pages"
        records = []
        for i in range(n):
            rec: dict[str, Any] = {"id": page_id(doc_id, i + 1), **base, "page": i + 1, "width": None, "height": None}
            if locked:
                rec["encrypted"] = True
            else:
                try:
                    page = doc.load_page(i)
                    rec["width"], rec["height"] = round(page.rect.width, 2), round(page.rect.height, 2)
                    if with_text:
                        rec["text"] = page.get_text("text")
                except Exception as e:  # a broken page is still listed: render records its failure
                    rec["list_error"] = f"{type(e).__name__}: {e}"
            records.append(rec)
    return records, None


def _work(args: tuple[Path, str, str, bool]) -> tuple[Path, str, list[dict], str | None]:
    path, relpath, scheme, with_text = args
    try:
        records, reason = list_document(path, relpath, scheme, with_text)
    except Exception as e:  # never let one file stop the run
        records, reason = [], f"{type(e).__name__}: {e}"
    return path, relpath, records, reason


def split_pdfs(inputs: list[str], out: str | os.PathLike, failures: str | os.PathLike | None = None,
               passwords: dict[str, str] | None = None, with_text: bool = False, id_scheme: str = "path",
               workers: int = 1) -> dict[str, int]:
    """Write the page list; returns ``{"documents", "pages", "failed_documents"}``."""
    pdfs = find_pdfs(inputs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    failures = Path(failures) if failures else out.with_name(out.stem + ".failures.jsonl")
    if failures.exists():
        failures.unlink()  # the page list is rewritten from scratch, so is its failures log
    tasks = [(p, rel, id_scheme, with_text) for p, rel in pdfs]
    n_pages = n_failed = 0
    tmp = out.with_name(out.name + ".tmp")
    with FailureLog(failures) as flog, open(tmp, "w", encoding="utf-8") as fh:
        if workers > 1:
            pool = mp.get_context("spawn").Pool(workers, initializer=_init, initargs=(passwords or {},))
            results = pool.imap(_work, tasks, chunksize=4)
        else:
            pool, results = None, None
            _init(passwords or {})
            results = map(_work, tasks)
        try:
            for path, relpath, records, reason in tqdm(results, total=len(tasks), desc="split", unit="pdf"):
                if reason is not None:
                    n_failed += 1
                    flog.add(reason, stage="split", doc=relpath, source=str(path))
                for rec in records:
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n_pages += len(records)
        finally:
            if pool is not None:
                pool.terminate()
    os.replace(tmp, out)
    summary = {"documents": len(pdfs), "pages": n_pages, "failed_documents": n_failed}
    print(f"split_pdfs: {len(pdfs)} PDFs -> {n_pages} pages listed in {out}; "
          f"{n_failed} documents failed (see {failures})")
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m data_prep.split_pdfs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pdfs", nargs="+", required=True,
                    help="folders (walked recursively), .pdf files, or text files listing PDF paths one per line")
    ap.add_argument("--out", required=True, help="output page list (JSONL, one line per page)")
    ap.add_argument("--failures", help="failures JSONL (default: <out stem>.failures.jsonl beside --out)")
    ap.add_argument("--passwords", help="JSON map {relative_path | file name | sha256: password} for encrypted PDFs")
    ap.add_argument("--with_text", action="store_true", help="store each page's text layer in the 'text' field")
    ap.add_argument("--id_scheme", choices=("path", "sha256"), default="path",
                    help="doc id = relative path without .pdf (default) or the first 16 hex of the sha256")
    ap.add_argument("--workers", type=int, default=1, help="processes for listing (default 1)")
    args = ap.parse_args(argv)
    split_pdfs(args.pdfs, args.out, args.failures, load_passwords(args.passwords), args.with_text,
               args.id_scheme, args.workers)


if __name__ == "__main__":
    main()
