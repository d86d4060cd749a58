"""Render a page list into a page store: ``python -m data_prep.render --pages pages.jsonl --out STORE``.

Design
    * Tasks are runs of up to ``--chunk_pages`` consecutive pages of one document, handed to ``--workers`` render
      processes (``data_prep.rasterize`` under ``data_prep.supervisor``; PyMuPDF is not thread-safe). This
      process is the single writer: it receives encoded pages through pipes and appends them to a
      ``PageStoreWriter`` (atomic shard commits).
    * Per-page timeout: a worker that sends nothing for ``--page_timeout`` seconds is killed (SIGKILL) and
      replaced; the page it was on is recorded as failed and the rest of its task is re-queued. A worker that dies
      (segfault in a decoder, out of memory) is handled the same way.
    * Failures (encrypted without password, unopenable files, pages that fail or hang) go to ``--failures``
      (default ``STORE/failures.jsonl``) with doc, page, id and reason. At the end the run asserts and prints
      ``rendered + failed == listed``.
    * Resume: committed shards and the failures log are the journal. Re-running the same command after any kill
      (even ``kill -9``) renders only the missing pages; since encoding is deterministic, the store then holds
      the same ids with the same bytes as an uninterrupted run. Pages that failed are not tried again, except
      those that failed by a timeout, when the rerun gives a longer ``--page_timeout``.
    * Settings: the settings that decide a page's bytes (``--dpi``, ``--max_side``, ``--format``, ``--quality``)
      are recorded in ``STORE/render_settings.json``; resuming a store with other settings is refused with one line
      naming each difference, so that a store never mixes two renderings.
    * Repair: on resume the shards found are verified first (``--verify pages``, the default: every page decoded;
      ``--verify shards``: structure only, faster). A corrupt shard (truncated, not HDF5, offsets past the data,
      a page that does not decode) is moved aside into ``STORE/corrupt/``, never deleted, and its pages are
      rendered again, so the store ends with the same ids and bytes as an uninterrupted run.
    * Full disk: a shard that cannot be written stops the run with one line naming it; the committed shards are
      intact, and the same command resumes once space is freed.
"""
from __future__ import annotations

import argparse
from collections import deque
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_prep.errors import cli, stop_on_sigterm
from data_prep.failures import FailureLog
from data_prep.flags import positive_float, positive_int
from data_prep.outputs import check_outputs, check_settings, record_settings
from data_prep.page_list import read_pages
from data_prep.pdf import load_passwords
from data_prep.rasterize import FORMATS, RenderSettings, page_renderer
from data_prep.store import PageStoreWriter, shard_paths
from data_prep.supervisor import Supervisor, is_timeout

SETTINGS_RECORD = "render_settings.json"


def make_tasks(pages: list[dict[str, Any]], chunk_pages: int) -> deque[list[dict[str, Any]]]:
    """Group pages into runs of at most ``chunk_pages`` consecutive records of the same document."""
    tasks: deque[list[dict[str, Any]]] = deque()
    for rec in pages:
        last = tasks[-1] if tasks else None
        if last and last[0]["source"] == rec["source"] and len(last) < chunk_pages:
            last.append(rec)
        else:
            tasks.append([rec])
    return tasks


def _sink(writer: PageStoreWriter, flog: FailureLog, bar: tqdm, page_timeout: float):
    """Parent-side callbacks of the supervisor: store rendered pages, log failed ones (with the timeout that a
    page took longer than, so that a rerun with a longer one tries it again)."""

    def on_fail(rec: dict[str, Any], reason: str) -> None:
        flog.add(reason, stage="render", doc=rec["doc_id"], source=rec["source"], page=rec["page"], page_id=rec["id"],
                 extra={"timeout": page_timeout} if is_timeout(reason) else None)
        bar.update(1)

    def on_result(rec: dict[str, Any], result: tuple) -> None:
        if result[0] != "ok":
            on_fail(rec, result[1])
            return
        writer.add(rec["id"], result[1], result[2])
        bar.update(1)

    return on_result, on_fail


def render(pages_path: str | Path, out: str | Path, settings: RenderSettings, workers: int = 1,
           failures: str | Path | None = None, passwords: dict[str, str] | None = None, page_timeout: float = 120.0,
           chunk_pages: int = 16, shard_pages: int = 2048, shard_bytes: int = 512 << 20,
           verify: str = "pages") -> dict[str, int]:
    """Render every listed page not yet in the store or the failures log; returns the final counts.

    Shards already in ``out`` are verified first (``verify``: "pages" decodes every page, "shards" checks the
    structure only) and corrupt ones set aside, so their pages are rendered again.
    """
    pages = read_pages(pages_path)
    failures = Path(failures) if failures else Path(out) / "failures.jsonl"
    record = Path(out) / SETTINGS_RECORD
    check_settings(record, settings.fingerprint(), _has_output(out, failures), f"page store {out}")
    with _open_store(out, shard_pages, shard_bytes, verify) as writer, FailureLog(failures) as flog:
        record_settings(record, settings.fingerprint())
        given_up = flog.failed_ids - timed_out_before(flog.records, page_timeout)
        todo = [r for r in pages if not writer.has(r["id"]) and r["id"] not in given_up]
        done_before = len(pages) - len(todo)
        with tqdm(total=len(pages), initial=done_before, desc="render", unit="page", smoothing=0.1) as bar:
            if todo:
                on_result, on_fail = _sink(writer, flog, bar, page_timeout)
                Supervisor(page_renderer, (settings, passwords or {}), workers, page_timeout, on_result,
                           on_fail).run(make_tasks(todo, chunk_pages))
        writer.commit()
        listed = {r["id"] for r in pages}
        rendered = len(listed & writer.committed_ids())
        failed = len(listed & (flog.failed_ids - writer.committed_ids()))
    print(f"render: {len(listed)} pages listed = {rendered} rendered + {failed} failed "
          f"({done_before} were done before this run); store {out}, failures {failures}")
    if rendered + failed != len(listed):
        raise RuntimeError(f"accounting error: {rendered} rendered + {failed} failed != {len(listed)} listed")
    return {"listed": len(listed), "rendered": rendered, "failed": failed}


def timed_out_before(failures: list[dict[str, Any]], page_timeout: float) -> set[str]:
    """Pages whose every failure was a timeout shorter than ``page_timeout``: this run tries them again."""
    shorter, other = set(), set()
    for rec in failures:
        if rec.get("id"):
            (shorter if rec.get("timeout", page_timeout) < page_timeout else other).add(rec["id"])
    return shorter - other


def _has_output(out: str | Path, failures: Path) -> bool:
    """Whether the store holds shards or the failures log records: a rerun resumes them."""
    has_shards = Path(out).is_dir() and bool(shard_paths(out))
    return has_shards or (failures.is_file() and failures.stat().st_size > 0)


def _open_store(out: str | Path, shard_pages: int, shard_bytes: int, verify: str) -> PageStoreWriter:
    """The store's writer, after verifying the shards already there and setting corrupt ones aside."""
    resuming = Path(out).is_dir() and bool(shard_paths(out))
    with tqdm(desc="verify store", unit="page", disable=verify != "pages" or not resuming, leave=False) as bar:
        writer = PageStoreWriter(out, shard_pages, shard_bytes, repair=True, decode=verify == "pages",
                                 on_page=lambda: bar.update(1))
    for shard, target, problem in writer.set_aside:
        print(f"render: corrupt shard {shard} ({problem}) moved aside to {target}; its pages are rendered again")
    return writer


@cli
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m data_prep.render", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", required=True, help="page list written by data_prep.split_pdfs")
    ap.add_argument("--out", required=True, help="page store directory (created; re-run the same command to resume)")
    ap.add_argument("--dpi", type=positive_float, default=144.0, help="render resolution (default 144)")
    ap.add_argument("--max_side", type=positive_int, default=4096,
                    help="cap on the longest side in pixels (default 4096)")
    ap.add_argument("--format", choices=sorted(FORMATS), default="jpeg", help="image encoding (default jpeg)")
    ap.add_argument("--quality", type=positive_int, default=90, help="JPEG/WebP quality 1-100 (default 90)")
    ap.add_argument("--workers", type=positive_int, default=1, help="render processes (default 1)")
    ap.add_argument("--page_timeout", type=positive_float, default=120.0,
                    help="seconds a page may take before its worker is killed and the page failed (default 120); "
                         "a rerun with a longer timeout tries the pages that timed out again")
    ap.add_argument("--chunk_pages", type=positive_int, default=16, help="pages of one document per task (default 16)")
    ap.add_argument("--shard_pages", type=positive_int, default=2048, help="pages per shard file (default 2048)")
    ap.add_argument("--shard_mb", type=positive_int, default=512, help="max MiB per shard file (default 512)")
    ap.add_argument("--failures", help="failures JSONL (default STORE/failures.jsonl)")
    ap.add_argument("--passwords", help="JSON map {relative_path | file name | sha256: password} for encrypted PDFs")
    ap.add_argument("--verify", choices=("pages", "shards"), default="pages",
                    help="on resume, check the shards found: decode every page (default) or the structure only; "
                         "corrupt shards are moved aside to STORE/corrupt/ and their pages rendered again")
    args = ap.parse_args(argv)
    check_outputs({"--out": args.out, "--failures": args.failures},
                  {"--pages": args.pages, "--passwords": args.passwords}, directories=("--out",))
    stop_on_sigterm()
    settings = RenderSettings(args.dpi, args.max_side, args.format, args.quality)
    render(args.pages, args.out, settings, args.workers, args.failures, load_passwords(args.passwords),
           args.page_timeout, args.chunk_pages, args.shard_pages, args.shard_mb << 20, args.verify)


if __name__ == "__main__":
    main()
