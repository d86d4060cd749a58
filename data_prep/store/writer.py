"""Writing a page store (``PageStoreWriter``): pages appended into atomically committed shards, resumable.

Crash safety
    The writer buffers pages in memory and commits a shard only when it is full (or on ``close``): it writes
    ``shard-NNNNN.h5.tmp``, fsyncs it and renames it to ``shard-NNNNN.h5``, then fsyncs the directory. A ``kill -9``
    therefore loses at most the uncommitted buffer and never leaves a half-written ``.h5`` that a reader would open;
    leftover ``.tmp`` files are deleted when a writer next opens the store. The committed shards are the journal of
    finished pages: ``writer.has(page_id)`` tells a resuming job what to skip. A full disk while writing a shard
    removes its ``.tmp`` and stops with a ``DiskFullError`` saying the committed shards are intact.

The store lock
    An exclusive ``flock`` on ``STORE/.lock``, held from ``__init__`` to ``close``, refuses a second concurrent
    writer with :class:`StoreBusyError`. Readers take no lock: they only ever see committed shards.

Repair
    With ``repair`` the committed shards are verified first and corrupt ones moved aside
    (``data_prep.store.repair``), so that their pages count as not written and get written again.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from data_prep.errors import DiskFullError, InputError, stop_on_full_disk
from data_prep.outputs import BusyError, lock_directory
from data_prep.store.format import FORMAT_VERSION, TEXT_DTYPE, fsync_dir, shard_name, shard_numbers, shard_paths
from data_prep.store.reader import PageStore
from data_prep.store.repair import aside_numbers, set_aside_corrupt


class StoreBusyError(BusyError):
    """A second writer on a store that another process is writing."""


class PageStoreWriter:
    """Appends pages to a store directory in atomically committed shards; resumable (see the module docstring).

    Use as a context manager; ``close`` commits the partial last shard. ``has(page_id)`` is true for pages in
    committed shards and in the current buffer. Adding an id twice raises ``ValueError``. With ``repair`` the
    committed shards are verified first (``decode``: every page decoded too; ``on_page``: progress) and corrupt
    ones moved aside into ``STORE/corrupt/`` (listed in ``set_aside``), so that their pages count as not written.
    """

    def __init__(self, path: str | os.PathLike, shard_pages: int = 2048, shard_bytes: int = 512 << 20,
                 repair: bool = False, decode: bool = True, on_page: Callable[[], None] | None = None):
        if shard_pages < 1 or shard_bytes < 1:
            raise ValueError("shard_pages and shard_bytes must be positive")
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"page store {self.path} exists and is not a directory; writers need a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        self.shard_pages, self.shard_bytes = shard_pages, shard_bytes
        self._lock = lock_directory(self.path, f"page store {self.path} is being written by another process; "
                                    "wait for it to end", StoreBusyError)
        for tmp in self.path.glob("shard-*.h5.tmp"):  # uncommitted leftovers of a killed run
            tmp.unlink()
        # (shard, where it went, why) for each corrupt shard moved aside
        self.set_aside: list[tuple[Path, Path, str]] = set_aside_corrupt(self.path, decode, on_page) if repair else []
        self._committed: set[str] = set(PageStore(self.path).ids()) if shard_paths(self.path) else set()
        self._next_shard = max(shard_numbers(self.path) + aside_numbers(self.path), default=-1) + 1
        self._buf_ids: list[str] = []
        self._buf_data: list[bytes] = []
        self._buf_meta: list[str] = []
        self._buf_set: set[str] = set()
        self._buf_bytes = 0
        self._disk_full = False
        self.pages_written = 0

    def has(self, page_id: str) -> bool:
        return page_id in self._committed or page_id in self._buf_set

    def committed_ids(self) -> set[str]:
        return set(self._committed)

    def add(self, page_id: str, data: bytes, meta: dict[str, Any] | None = None) -> None:
        """Buffer one page; commits a shard when the buffer is full."""
        if not isinstance(page_id, str) or not page_id:
            raise ValueError(f"page id must be a non-empty string, got {page_id!r}")
        if self.has(page_id):
            raise ValueError(f"page id {page_id!r} is already in page store {self.path}")
        self._buf_ids.append(page_id)
        self._buf_data.append(bytes(data))
        self._buf_meta.append(json.dumps(meta or {}, sort_keys=True, ensure_ascii=False))
        self._buf_set.add(page_id)
        self._buf_bytes += len(data)
        if len(self._buf_ids) >= self.shard_pages or self._buf_bytes >= self.shard_bytes:
            self.commit()

    def commit(self) -> Path | None:
        """Write the buffered pages as one new shard (tmp file, fsync, rename). Returns its path, or None if empty."""
        if not self._buf_ids:
            return None
        final = self.path / shard_name(self._next_shard)
        tmp = final.with_name(final.name + ".tmp")
        n = len(self._buf_ids)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(b) for b in self._buf_data], out=offsets[1:])
        kept = (f"the {len(self._committed)} pages of the committed shards are intact; free space and run the same "
                "command again to resume")
        try:
            with stop_on_full_disk(final, kept):
                self._write_shard(tmp, offsets)
        except BaseException as err:
            tmp.unlink(missing_ok=True)  # never committed: only this run's own partial write
            self._disk_full = isinstance(err, DiskFullError)
            raise
        os.replace(tmp, final)
        fsync_dir(self.path)
        self._committed.update(self._buf_ids)
        self.pages_written += n
        self._next_shard += 1
        self._buf_ids, self._buf_data, self._buf_meta, self._buf_set, self._buf_bytes = [], [], [], set(), 0
        return final

    def _write_shard(self, tmp: Path, offsets: np.ndarray) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["format_version"] = FORMAT_VERSION
            f.create_dataset("ids", data=np.array(self._buf_ids, dtype=object), dtype=TEXT_DTYPE)
            f.create_dataset("data", data=np.frombuffer(b"".join(self._buf_data), dtype=np.uint8))  # contiguous
            f.create_dataset("offsets", data=offsets)
            f.create_dataset("meta", data=np.array(self._buf_meta, dtype=object), dtype=TEXT_DTYPE)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())

    def close(self) -> None:
        """Commit the partial shard and release the lock."""
        if self._lock.closed:
            return
        try:
            if not self._disk_full:  # after a full disk, writing the same shard again would only fail again
                self.commit()
        finally:
            self._lock.close()  # releases the lock

    def __enter__(self) -> "PageStoreWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
