"""split_pdfs + render: real PDFs, encrypted files and password maps, bad inputs, hanging pages, kill -9 resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pymupdf
import pytest

from data_prep.page_list import read_pages
from data_prep.pdf import PdfError, open_pdf
from data_prep.rasterize import RenderSettings
from data_prep.render import main as render_main, render
from data_prep.split_pdfs import split_pdfs
from data_prep.store import PageStore
from tests.helpers.cli import one_error_line

PASSWORDS = {"005-libreoffice-writer-password_libreoffice-writer-password.pdf": "openpassword",
             "r6-both-passwords.pdf": "foo",
             **{f"r{r}-user-password.pdf": "asdfzxcv" for r in ("2", "3", "4", "4-aes", "5", "6")}}


def _text_pdf(path: Path, n_pages: int, size=(300, 400)) -> Path:
    doc = pymupdf.open()
    for i in range(n_pages):
        page = doc.new_page(width=size[0], height=size[1])
        page.insert_text((30, 60), f"page {i + 1} of {path.name}", fontsize=14)
        page.draw_rect(pymupdf.Rect(30, 80, 30 + 5 * (i % 40), 120), color=(0, 0, 1), fill=(1, 0.5, 0))
    doc.save(path)
    return path


def _hanging_pdf(path: Path, depth: int = 7, fan: int = 10) -> Path:
    """3 pages; page 2 draws a form XObject that nests ``fan`` copies of itself ``depth`` deep (10^7 fills, ~100 s)."""
    doc = pymupdf.open()
    doc.new_page(width=200, height=200).insert_text((20, 50), "page one")
    page_xref = doc.new_page(width=200, height=200).xref
    doc.new_page(width=200, height=200).insert_text((20, 50), "page three")
    prev = None
    for _ in range(depth + 1):
        xref = doc.get_new_xref()
        res = "<< >>" if prev is None else f"<< /XObject << /X {prev} 0 R >> >>"
        doc.update_object(xref, f"<< /Type /XObject /Subtype /Form /BBox [0 0 200 200] /Resources {res} >>")
        doc.update_stream(xref, b"0 0 1 1 re f" if prev is None else b"q /X Do Q " * fan)
        prev = xref
    contents = doc.get_new_xref()
    doc.update_object(contents, "<< >>")
    doc.update_stream(contents, b"/B Do")
    doc.xref_set_key(page_xref, "Resources", f"<< /XObject << /B {prev} 0 R >> >>")
    doc.xref_set_key(page_xref, "Contents", f"{contents} 0 R")
    doc.save(path)
    return path


def _failures(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.shared_pdfs
def test_shared_pdfs_every_openable_page_renders(shared_pdfs, tmp_path):
    pages_path = tmp_path / "pages.jsonl"
    split_pdfs([str(shared_pdfs)], pages_path, workers=2)
    pages = read_pages(pages_path)
    store_dir = tmp_path / "store"
    counts = render(pages_path, store_dir, RenderSettings(dpi=36, max_side=1024), workers=2)
    store = PageStore(store_dir)
    assert counts["rendered"] == len(store) and counts["rendered"] + counts["failed"] == len(pages)

    failed = {r["id"]: r for r in _failures(store_dir / "failures.jsonl")}
    openable, locked = set(), set()
    for source in {r["source"] for r in pages}:
        try:
            open_pdf(source).close()
            openable.add(source)
        except PdfError as e:
            assert str(e).startswith("encrypted"), (source, e)
            locked.add(source)
    assert len(locked) == 8  # 7 user-password files of pypdf + the py-pdf sample with 'openpassword'
    for rec in pages:
        if rec["source"] in openable:
            assert rec["id"] in store, (rec["id"], failed.get(rec["id"]))
            meta = store.meta(rec["id"])
            assert meta["page"] == rec["page"] and meta["source"] == rec["source"] and max(
                meta["width"], meta["height"]) <= 1024
        else:
            assert "encrypted: needs a password" in failed[rec["id"]]["reason"]
    assert max(store.get_image(i).height for i in store.ids() if i.startswith("olmocr-gnarly/skinnypage")) <= 1024

    # retry with the password map: move the failures log aside, re-run; only the encrypted pages are rendered now
    n_before = len(store)
    (store_dir / "failures.jsonl").rename(tmp_path / "failures.first.jsonl")
    counts = render(pages_path, store_dir, RenderSettings(dpi=36, max_side=1024), passwords=PASSWORDS)
    assert counts == {"listed": len(pages), "rendered": len(pages), "failed": 0}
    store = PageStore(store_dir)
    assert len(store) == n_before + len(failed) and all(pid in store for pid in failed)


def test_bad_inputs_and_hanging_page_are_recorded(tmp_path):
    pdfs = tmp_path / "pdfs"
    (pdfs / "sub").mkdir(parents=True)
    _text_pdf(pdfs / "good.pdf", 3)
    whole = _text_pdf(tmp_path / "whole.pdf", 6).read_bytes()
    (pdfs / "sub" / "truncated.pdf").write_bytes(whole[: len(whole) // 2])
    (pdfs / "empty.pdf").write_bytes(b"")
    (pdfs / "notpdf.pdf").write_text("this is a plain text file\n" * 20)
    _hanging_pdf(pdfs / "hang.pdf")
    pages_path = tmp_path / "pages.jsonl"
    summary = split_pdfs([str(pdfs)], pages_path, workers=2)
    assert summary["documents"] == 5
    split_failed = {r["doc"]: r["reason"] for r in _failures(tmp_path / "pages.failures.jsonl")}
    assert split_failed["empty.pdf"] == "empty file (0 bytes)"
    assert split_failed["notpdf.pdf"].startswith("cannot open")
    pages = read_pages(pages_path)
    assert [r["id"] for r in pages[:3]] == ["good/1", "good/2", "good/3"] and pages[0]["width"] == 300

    store_dir = tmp_path / "store"
    t0 = time.monotonic()
    counts = render(pages_path, store_dir, RenderSettings(dpi=72), workers=2, page_timeout=1.5)
    assert time.monotonic() - t0 < 60
    assert counts["rendered"] + counts["failed"] == counts["listed"] == len(pages)
    store = PageStore(store_dir)
    assert {"good/1", "good/2", "good/3", "hang/1", "hang/3"} <= set(store.ids())
    failed = {r["id"]: r for r in _failures(store_dir / "failures.jsonl")}
    assert "hang/2" not in store and failed["hang/2"]["reason"].startswith("timeout")
    assert failed["hang/2"]["doc"] == "hang" and failed["hang/2"]["page"] == 2


def test_split_with_text_and_document_timeout(tmp_path):
    _text_pdf(tmp_path / "good.pdf", 2)
    _hanging_pdf(tmp_path / "hang.pdf")  # its text extraction hangs too
    listing = tmp_path / "list.txt"
    listing.write_text("# PDFs to list\ngood.pdf\nhang.pdf\n")
    pages_path = tmp_path / "out" / "pages.jsonl"
    summary = split_pdfs([str(listing)], pages_path, with_text=True, doc_timeout=1.5, id_scheme="sha256")
    assert summary == {"documents": 2, "pages": 2, "failed_documents": 1}
    pages = read_pages(pages_path)
    assert "page 2 of good.pdf" in pages[1]["text"] and pages[1]["id"] == pages[1]["sha256"][:16] + "/2"
    (fail,) = _failures(tmp_path / "out" / "pages.failures.jsonl")
    assert fail["doc"] == "hang.pdf" and fail["reason"].startswith("timeout")


def test_pages_that_timed_out_are_tried_again_only_with_a_longer_timeout(tmp_path):
    pages_path = tmp_path / "pages.jsonl"
    split_pdfs([str(_hanging_pdf(tmp_path / "hang.pdf"))], pages_path)
    store_dir = tmp_path / "store"
    for timeout, tries in ((1.0, 1), (1.0, 1), (2.0, 2), (1.5, 2)):
        counts = render(pages_path, store_dir, RenderSettings(dpi=72), page_timeout=timeout)
        assert counts == {"listed": 3, "rendered": 2, "failed": 1}
        failed = _failures(store_dir / "failures.jsonl")
        assert [(r["id"], r["timeout"]) for r in failed] == [("hang/2", 1.0), ("hang/2", 2.0)][:tries], timeout


def test_a_store_is_not_resumed_with_other_render_settings(tmp_path, capsys):
    pages_path = tmp_path / "pages.jsonl"
    split_pdfs([str(_text_pdf(tmp_path / "a.pdf", 3))], pages_path)
    store_dir = tmp_path / "store"
    first = ["--pages", str(pages_path), "--out", str(store_dir), "--dpi", "36"]
    render_main(first)
    shards = {p.name: p.read_bytes() for p in store_dir.glob("shard-*.h5")}
    line = one_error_line(render_main, [*first[:-1], "72", "--format", "png"], capsys)
    assert line == (f"error: {store_dir / 'render_settings.json'}: page store {store_dir} was made with other settings "
                    "than this run: --dpi 36.0 (this run: 72.0), --format 'jpeg' (this run: 'png'), --quality 90 (this "
                    "run: None); resuming would mix the outputs of both: write to a new output path, or rerun with the "
                    "settings it was made with")
    assert {p.name: p.read_bytes() for p in store_dir.glob("shard-*.h5")} == shards
    render_main([*first, "--shard_pages", "2", "--page_timeout", "30"])  # settings that keep the bytes may change


def _render_cmd(pages: Path, store: Path) -> list[str]:
    return [sys.executable, "-m", "data_prep.render", "--pages", str(pages), "--out", str(store), "--dpi", "110",
            "--workers", "1", "--chunk_pages", "4", "--shard_pages", "6"]


def test_kill_9_then_resume_gives_identical_store(tmp_path):
    pdfs = tmp_path / "pdfs"
    pdfs.mkdir()
    for name, n in (("a.pdf", 70), ("b.pdf", 50)):
        _text_pdf(pdfs / name, n, size=(612, 792))
    pages_path = tmp_path / "pages.jsonl"
    split_pdfs([str(pdfs)], pages_path)
    reference = tmp_path / "reference"
    render(pages_path, reference, RenderSettings(dpi=110), workers=2, chunk_pages=4, shard_pages=6)

    store_dir = tmp_path / "store"
    proc = subprocess.Popen(_render_cmd(pages_path, store_dir), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(store_dir.glob("shard-*.h5"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = len(PageStore(store_dir))
    assert 0 < killed_at < 120, "the run should have been killed part-way"

    subprocess.run(_render_cmd(pages_path, store_dir), check=True, capture_output=True)
    ref, got = PageStore(reference), PageStore(store_dir)
    assert sorted(got.ids()) == sorted(ref.ids()) and len(got) == 120  # every page exactly once
    assert all(got.get_bytes(i) == ref.get_bytes(i) for i in ref.ids())
    assert not list(store_dir.glob("*.tmp"))


def test_bad_page_list_line_is_named(tmp_path):
    bad = tmp_path / "pages.jsonl"
    bad.write_text('{"id": "a/1", "doc_id": "a", "page": 1, "source": "a.pdf"}\n{"id": "a/1", "doc_id": "a", '
                   '"page": 2, "source": "a.pdf"}\n')
    with pytest.raises(ValueError, match=r"pages.jsonl: line 2: duplicate page id 'a/1' \(first on line 1\)"):
        read_pages(bad)
    bad.write_text('{"id": "a/1"\n')
    with pytest.raises(ValueError, match="line 1: invalid JSON"):
        read_pages(bad)


def test_cli_help():
    for mod in ("split_pdfs", "render", "inspect"):
        out = subprocess.run([sys.executable, "-m", f"data_prep.{mod}", "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "usage" in out.stdout
