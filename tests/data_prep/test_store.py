"""PageStore / PageStoreWriter: round trip, shards, clear errors, crash leftovers, fork-safe DataLoader reads."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from data_prep.store import PageStore, PageStoreWriter, UnknownPageError


def _png(color: tuple[int, int, int], size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture()
def store_dir(tmp_path):
    path = tmp_path / "store"
    with PageStoreWriter(path, shard_pages=4) as w:
        for i in range(10):
            w.add(f"doc/{i + 1}", _png((i * 20, 0, 255 - i * 20)), {"page": i + 1, "source": "x.pdf"})
    return path


def test_round_trip_across_shards(store_dir):
    store = PageStore(store_dir)
    assert len(store) == 10 and len(store.shard_files()) == 3  # 4 + 4 + 2
    assert store.ids() == [f"doc/{i + 1}" for i in range(10)]
    assert "doc/3" in store and "doc/11" not in store
    assert store.get_bytes("doc/3") == _png((40, 0, 215))
    img = store.get_image("doc/3")
    assert img.mode == "RGB" and img.size == (40, 30) and img.getpixel((0, 0)) == (40, 0, 215)
    assert store.meta("doc/3") == {"page": 3, "source": "x.pdf"}
    single = PageStore(store.shard_files()[1])  # one shard file is a store too
    assert single.ids() == ["doc/5", "doc/6", "doc/7", "doc/8"]


def test_unknown_id_error_names_id_and_store(store_dir):
    with pytest.raises(KeyError, match=r"'doc/99' is not in page store .*store"):
        PageStore(store_dir).get_bytes("doc/99")
    with pytest.raises(UnknownPageError):
        PageStore(store_dir).meta("nope")
    with pytest.raises(FileNotFoundError, match="missing"):
        PageStore(store_dir.parent / "missing")


def test_writer_resume_duplicates_leftovers_and_lock(store_dir):
    (store_dir / "shard-00009.h5.tmp").write_bytes(b"half-written shard of a killed run")
    with PageStoreWriter(store_dir, shard_pages=4) as w:
        assert not (store_dir / "shard-00009.h5.tmp").exists()
        assert w.has("doc/10") and not w.has("doc/11")
        with pytest.raises(ValueError, match="already in page store"):
            w.add("doc/2", b"x")
        with pytest.raises(RuntimeError, match="being written by another process"):
            PageStoreWriter(store_dir)
        w.add("doc/11", _png((1, 2, 3)))
    store = PageStore(store_dir)
    assert len(store) == 11 and store.get_bytes("doc/11") == _png((1, 2, 3))
    assert sorted(p.name for p in store_dir.glob("*.h5"))[-1] == "shard-00003.h5"


class _Pages(torch.utils.data.Dataset):
    def __init__(self, store: PageStore):
        self.store, self.ids = store, store.ids()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        img = self.store.get_image(self.ids[i])
        return self.ids[i], self.store.get_bytes(self.ids[i]), img.getpixel((0, 0))


def test_dataloader_workers_after_fork(store_dir):
    store = PageStore(store_dir)
    expected = {pid: store.get_bytes(pid) for pid in store.ids()}  # parent has open handles before the fork
    ctx = torch.multiprocessing.get_context("fork")
    loader = torch.utils.data.DataLoader(_Pages(store), batch_size=None, num_workers=2, multiprocessing_context=ctx)
    got = {pid: data for pid, data, _ in loader}
    assert got == expected
    assert store.get_bytes("doc/1") == expected["doc/1"]  # parent handles still fine


def test_pickled_store_reads_in_spawned_process(store_dir):
    code = ("import pickle,sys; s=pickle.loads(sys.stdin.buffer.read()); "
            "print(len(s), s.get_image('doc/5').getpixel((0,0)))")
    import pickle

    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(PageStore(store_dir)),
                         capture_output=True, check=True)
    assert out.stdout.decode().split() == ["10", "(80,", "0,", "175)"]


def test_inspect_cli(store_dir, tmp_path):
    out = subprocess.run([sys.executable, "-m", "data_prep.inspect", str(store_dir), "--json"],
                         capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    assert info["pages"] == 10 and info["shards"] == 3 and info["bytes"] > 0
    png = tmp_path / "p.png"
    subprocess.run([sys.executable, "-m", "data_prep.inspect", str(store_dir), "--dump", "doc/2", "--png", str(png)],
                   check=True, capture_output=True)
    assert Image.open(png).getpixel((0, 0)) == (20, 0, 235)
    bad = subprocess.run([sys.executable, "-m", "data_prep.inspect", str(store_dir), "--dump", "zzz"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "'zzz' is not in page store" in bad.stderr


def test_layout_is_plain_hdf5_and_chunked_data_is_read_through_h5py(tmp_path):
    import h5py
    import numpy as np

    pages = [_png((i, i, i)) for i in range(3)]
    path = tmp_path / "other_tool.h5"  # a shard written by another tool, with chunked + compressed data
    offsets = np.cumsum([0] + [len(p) for p in pages])
    with h5py.File(path, "w") as f:
        f.create_dataset("ids", data=np.array(["a", "b", "c"], dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("data", data=np.frombuffer(b"".join(pages), np.uint8), chunks=(64,), compression="gzip")
        f.create_dataset("offsets", data=offsets)
    store = PageStore(path)
    assert [store.get_bytes(i) for i in "abc"] == pages and store.meta("b") == {}
    with h5py.File(PageStore(path).path, "r") as f:
        o = f["offsets"][()]
        assert f["data"][o[1]:o[2]].tobytes() == pages[1]
