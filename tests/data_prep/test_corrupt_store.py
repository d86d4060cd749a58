"""Corrupt page stores: each kind of damage gives a named error, ``inspect --verify`` reports it, and resuming
``data_prep.render`` moves the shard aside and renders its pages again, ending with the uninterrupted bytes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import h5py
import pymupdf
import pytest

from data_prep.inspect import main as inspect_main
from data_prep.rasterize import RenderSettings
from data_prep.render import render
from data_prep.split_pdfs import split_pdfs
from data_prep.store import CorruptStoreError, PageStore

SETTINGS = RenderSettings(dpi=40)
SHARD_PAGES = 3


def _pdf(path: Path, n_pages: int) -> None:
    doc = pymupdf.open()
    for i in range(n_pages):
        doc.new_page(width=300, height=400).insert_text((30, 60), f"page {i + 1} of {path.name}", fontsize=14)
    doc.save(path)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, Path]:
    """(pages.jsonl, reference store): 8 pages in shards of 3, 3 and 2."""
    root = tmp_path_factory.mktemp("corrupt")
    (root / "pdfs").mkdir()
    _pdf(root / "pdfs" / "a.pdf", 5)
    _pdf(root / "pdfs" / "b.pdf", 3)
    split_pdfs([str(root / "pdfs")], root / "pages.jsonl")
    render(root / "pages.jsonl", root / "reference", SETTINGS, shard_pages=SHARD_PAGES)
    return root / "pages.jsonl", root / "reference"


def _truncate(shard: Path) -> None:
    with open(shard, "r+b") as fh:
        fh.truncate(shard.stat().st_size // 2)


def _text_file(shard: Path) -> None:
    shard.write_text("this is not a page store shard\n")


def _offsets_past_data(shard: Path) -> None:
    with h5py.File(shard, "r+") as f:
        f["offsets"][-1] = f["offsets"][-1] + 10_000


def _page_not_an_image(shard: Path) -> None:
    with h5py.File(shard, "r+") as f:
        start, end = int(f["offsets"][0]), int(f["offsets"][1])
        f["data"][start:end] = 0x41  # the first page's bytes become "AAAA...": same length, not an image


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (_truncate, r"truncated: the file has \d+ of its \d+ bytes"),
    "text file": (_text_file, "not an HDF5 file"),
    "offsets": (_offsets_past_data, r"offsets past the data: the page ends at byte \d+ but the data holds \d+"),
    "not an image": (_page_not_an_image, r"bytes do not decode as an image"),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_damage_is_named_verified_and_repaired_by_render(rendered, tmp_path, capsys, kind):
    pages, reference = rendered
    damage, problem = DAMAGE[kind]
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    shard = store / "shard-00001.h5"
    damage(shard)

    with pytest.raises(CorruptStoreError, match=rf"page store shard {shard}: .*{problem}.*--verify") as err:
        damaged = PageStore(store)
        for page_id in damaged.ids():
            damaged.get_image(page_id)
    assert err.value.shard == shard

    assert inspect_main([str(store), "--verify", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and report["shards"] == 3
    assert {p["shard"] for p in report["problems"]} == {str(shard)}
    assert all(p["problem"] for p in report["problems"])

    counts = render(pages, store, SETTINGS, shard_pages=SHARD_PAGES)
    assert counts == {"listed": 8, "rendered": 8, "failed": 0}
    assert f"corrupt shard {shard}" in capsys.readouterr().out
    assert (store / "corrupt" / shard.name).read_bytes() == shard_bytes_after(damage, reference / shard.name, tmp_path)
    ref, got = PageStore(reference), PageStore(store)
    assert sorted(got.ids()) == sorted(ref.ids())
    assert all(got.get_bytes(i) == ref.get_bytes(i) for i in ref.ids())
    assert inspect_main([str(store), "--verify"]) == 0


def shard_bytes_after(damage: Callable[[Path], None], original: Path, tmp_path: Path) -> bytes:
    """The damaged shard's bytes, made again from the original: what must have been moved aside, not deleted."""
    copy = tmp_path / "again.h5"
    shutil.copy(original, copy)
    damage(copy)
    return copy.read_bytes()


def test_verify_text_report_and_sound_store(rendered, tmp_path, capsys):
    _, reference = rendered
    assert inspect_main([str(reference), "--verify"]) == 0
    assert "3 shard(s), 8 readable page(s) checked: ok" in capsys.readouterr().out
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    _truncate(store / "shard-00002.h5")
    assert inspect_main([str(store), "--verify"]) == 1
    out = capsys.readouterr().out
    assert f"{store / 'shard-00002.h5'}: truncated" in out and "1 problem(s) in 1 shard(s)" in out


def test_corrupt_store_is_one_line_error_in_inspect(rendered, tmp_path, capsys):
    _, reference = rendered
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    _text_file(store / "shard-00000.h5")
    with pytest.raises(SystemExit) as exit_info:
        inspect_main([str(store)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: page store shard {store / 'shard-00000.h5'}: not an HDF5 file")
    assert "\n" not in err and "Traceback" not in err
