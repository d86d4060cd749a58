"""List the pages of many PDFs: ``python -m data_prep.split_pdfs --pdfs DIR_OR_LIST --out pages.jsonl``.

Walks folders recursively (see ``data_prep.page_list.find_pdfs``), hashes each PDF, counts and measures its pages and
optionally extracts each page's text layer (``--with_text``, for query generation). Documents are independent, so
they are listed by supervised worker processes (``--workers``; a document taking longer than ``--doc_timeout``
seconds, e.g. a page whose text extraction hangs, is killed and recorded as failed); the output is written in
sorted path order, so it is deterministic.

Encrypted PDFs are listed from their page count even without a password (sizes are ``null`` then) so that render
records each of their pages as failed -- or renders them when its password map has the password. Files that cannot
be listed at all (zero bytes, not a PDF, broken beyond repair, zero pages) go to the failures log
(``--failures``, default ``<out>.failures.jsonl``) with the reason; pages listed + documents failed is printed.
"""
from __future__ import annotations

import argparse
import json
import os
from collections import deque
from pathlib import Path
from typing import Any, Iterator

import pymupdf
from tqdm import tqdm

from data_prep.errors import cli
from data_prep.failures import FailureLog
from data_prep.flags import positive_float, positive_int
from data_prep.outputs import atomic_output, check_outputs, flag_paths
from data_prep.page_list import find_pdfs, make_doc_id, page_id
from data_prep.pdf import PdfError, load_passwords, open_pdf, password_for, sha256_file
from data_prep.supervisor import Supervisor

def list_document(path: Path, relpath: str, passwords: dict[str, str], id_scheme: str,
                  with_text: bool) -> tuple[list[dict], str | None]:
    """Page records of one PDF, or ``([], reason)`` when it cannot be listed."""
    sha = sha256_file(path)
    doc_id = make_doc_id(relpath, sha, id_scheme)
    base = {"doc_id": doc_id, "source": str(path), "relpath": relpath, "sha256": sha}
    pw = password_for(passwords, relpath, sha)
    try:
        doc = open_pdf(path, pw)
        locked = False
    except PdfError as e:
        if not str(e).startswith("encrypted"):
            return [], str(e)
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


def document_lister(passwords: dict[str, str], id_scheme: str, with_text: bool):
    """Worker-side factory (see ``data_prep.supervisor``): lists each ``(path, relpath)`` of a task."""
    pymupdf.TOOLS.mupdf_display_errors(False)
    pymupdf.TOOLS.mupdf_display_warnings(False)

    def handle(task: list[tuple[Path, str]]) -> Iterator[tuple[list[dict], str | None]]:
        for path, relpath in task:
            try:
                yield list_document(path, relpath, passwords, id_scheme, with_text)
            except Exception as e:  # never let one file stop the run
                yield [], f"{type(e).__name__}: {e}"

    return handle


def split_pdfs(inputs: list[str], out: str | os.PathLike, failures: str | os.PathLike | None = None,
               passwords: dict[str, str] | None = None, with_text: bool = False, id_scheme: str = "path",
               workers: int = 1, doc_timeout: float = 600.0) -> dict[str, int]:
    """Write the page list (in sorted path order); returns ``{"documents", "pages", "failed_documents"}``."""
    pdfs = find_pdfs(inputs)
    out = Path(out)
    failures = Path(failures) if failures else out.with_name(out.stem + ".failures.jsonl")
    listings = [item for item in inputs if not Path(item).is_dir()]  # outputs beside the PDFs are fine
    check_outputs({"--out": out, "--failures": failures},
                  {**flag_paths("--pdfs", listings), **flag_paths("a PDF of --pdfs", [path for path, _ in pdfs])})
    order = {rel: i for i, (_, rel) in enumerate(pdfs)}
    out.parent.mkdir(parents=True, exist_ok=True)
    if failures.exists():
        failures.unlink()  # the page list is rewritten from scratch, so is its failures log
    done: dict[int, list[dict]] = {}
    counts = {"documents": len(pdfs), "pages": 0, "failed_documents": 0}
    with atomic_output(out) as fh, FailureLog(failures) as flog, \
            tqdm(total=len(pdfs), desc="split", unit="pdf") as bar:
        next_i = 0

        def flush() -> None:  # write finished documents in input order
            nonlocal next_i
            while next_i in done:
                for rec in done.pop(next_i):
                    fh.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
                next_i += 1

        def on_result(item: tuple[Path, str], result: tuple[list[dict], str | None]) -> None:
            records, reason = result
            if reason is not None:
                on_fail(item, reason)
                return
            done[order[item[1]]] = records
            counts["pages"] += len(records)
            bar.update(1)
            flush()

        def on_fail(item: tuple[Path, str], reason: str) -> None:
            flog.add(reason, stage="split", doc=item[1], source=str(item[0]))
            counts["failed_documents"] += 1
            done[order[item[1]]] = []
            bar.update(1)
            flush()

        tasks = deque([[pdf] for pdf in pdfs])
        Supervisor(document_lister, (passwords or {}, id_scheme, with_text), min(workers, max(1, len(pdfs))),
                   doc_timeout, on_result, on_fail).run(tasks)
    print(f"split_pdfs: {len(pdfs)} PDFs -> {counts['pages']} pages listed in {out}; "
          f"{counts['failed_documents']} documents failed (see {failures})")
    return counts


@cli
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
    ap.add_argument("--workers", type=positive_int, default=1, help="processes for listing (default 1)")
    ap.add_argument("--doc_timeout", type=positive_float, default=600.0,
                    help="seconds one document may take to list (and extract text) before it is failed (default 600)")
    args = ap.parse_args(argv)
    split_pdfs(args.pdfs, args.out, args.failures, load_passwords(args.passwords), args.with_text,
               args.id_scheme, args.workers, args.doc_timeout)


if __name__ == "__main__":
    main()
