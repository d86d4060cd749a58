"""Reading a page store (``PageStore``): page bytes, images and metadata by page id, lazily and fork-safely.

Lazy and fork-safe
    Nothing is opened in ``__init__``. The id index (id -> shard, row) is built on first use from every shard's
    checked index (:func:`data_prep.store.format.read_shard_index`); file handles (a raw fd for page bytes, h5py for
    metadata) are opened on first read *in each process* and re-opened when the pid changes, so a store created in
    the parent works inside forked or spawned DataLoader workers. Pickling drops handles and index.

Page bytes
    Read with one ``pread`` at the ``data`` dataset's file position plus the page's offset; data written chunked or
    compressed by another tool is read through HDF5 instead. A short read, a duplicate id across shards or bytes that
    do not decode raise ``CorruptStoreError`` naming the shard and the page; an id the store does not hold raises
    :class:`UnknownPageError`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
from PIL import Image

from data_prep.errors import MissingInputError, UserError
from data_prep.images import Clip, ClipNotPageError, ImageDecodeError, decode_frames, decode_image
from data_prep.store.format import corrupt, read_shard_index, shard_paths


class UnknownPageError(UserError, KeyError):
    """Raised for a page id that the store does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class PageStore:
    """Read-only access to a page store by page id (see the module docstring for laziness and fork safety)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise MissingInputError(f"page store not found: {self.path} (expected an .h5 file or a directory of "
                                    "shards written by data_prep.render)")
        self._index: dict[str, tuple[int, int]] | None = None
        self._shards: list[Path] = []
        self._offsets: list[np.ndarray] = []  # per shard: n+1 byte offsets into its data dataset
        self._data_pos: list[int | None] = []  # per shard: file position of its data (None: not contiguous)
        self._files: list[h5py.File | None] = []
        self._fds: list[int | None] = []
        self._pid: int | None = None

    # -- index -------------------------------------------------------------------------------------------------
    def _ensure_index(self) -> dict[str, tuple[int, int]]:
        if self._index is None:
            shards = shard_paths(self.path)
            index: dict[str, tuple[int, int]] = {}
            offsets, positions = [], []
            for si, shard in enumerate(shards):
                entry = read_shard_index(shard)
                offsets.append(entry.offsets)
                positions.append(entry.data_pos)
                for row, pid in enumerate(entry.ids):
                    if pid in index:
                        other = shards[index[pid][0]]
                        raise corrupt(shard, f"page id {pid!r} is also in {other} (a copied shard?)", pid)
                    index[pid] = (si, row)
            self._shards, self._offsets, self._data_pos, self._index = shards, offsets, positions, index
            self._files, self._fds = [None] * len(shards), [None] * len(shards)
        return self._index

    def _check_pid(self) -> None:
        pid = os.getpid()
        if self._pid != pid:  # first use in this process (or after fork): never reuse the parent's handles
            self._files, self._fds = [None] * len(self._shards), [None] * len(self._shards)
            self._pid = pid

    def _fd(self, si: int) -> int:
        self._check_pid()
        fd = self._fds[si]
        if fd is None:
            fd = self._fds[si] = os.open(self._shards[si], os.O_RDONLY)
        return fd

    def _file(self, si: int) -> h5py.File:
        self._check_pid()
        f = self._files[si]
        if f is None:
            f = self._files[si] = h5py.File(self._shards[si], "r")
        return f

    def _locate(self, page_id: str) -> tuple[int, int]:
        try:
            return self._ensure_index()[page_id]
        except KeyError:
            raise UnknownPageError(f"page id {page_id!r} is not in page store {self.path}") from None

    # -- public API --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ensure_index())

    def __contains__(self, page_id: object) -> bool:
        return page_id in self._ensure_index()

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())

    def ids(self) -> list[str]:
        """All page ids, in shard order then row order."""
        return list(self._ensure_index())

    def get_bytes(self, page_id: str) -> bytes:
        """The encoded image bytes of ``page_id`` exactly as written."""
        si, row = self._locate(page_id)
        start, end = int(self._offsets[si][row]), int(self._offsets[si][row + 1])
        pos = self._data_pos[si]
        if pos is None:  # data written chunked/compressed by another tool: read through HDF5
            return self._file(si)["data"][start:end].tobytes()
        data = os.pread(self._fd(si), end - start, pos + start)
        if len(data) != end - start:
            size = self._shards[si].stat().st_size
            raise corrupt(self._shards[si], f"truncated: the page's bytes end at {pos + end} but the file has "
                          f"{size} bytes", page_id)
        return data

    def get_image(self, page_id: str) -> Image.Image:
        """The page decoded to an RGB PIL image (``CorruptStoreError`` naming page and shard if it does not decode)."""
        data = self.get_bytes(page_id)
        try:
            return decode_image(data, page_id)
        except ClipNotPageError:
            raise  # a clip decodes: the store is fine, the caller wanted a page
        except ImageDecodeError as err:
            raise corrupt(self._shards[self._locate(page_id)[0]], f"its {len(data)} bytes do not decode as an "
                          f"image ({err.reason})", page_id) from None

    def get_item(self, page_id: str) -> Image.Image | Clip:
        """:meth:`get_image`, or the :class:`~data_prep.images.Clip` of a video clip (``data_prep.videos``)."""
        try:
            return self.get_image(page_id)
        except ClipNotPageError:
            return Clip(tuple(decode_frames(self.get_bytes(page_id), f"page {page_id}")))

    def meta(self, page_id: str) -> dict[str, Any]:
        """Per-page metadata (source, page, width, height, dpi, format, ...); ``{}`` for shards without ``meta``."""
        si, row = self._locate(page_id)
        f = self._file(si)
        if "meta" not in f:
            return {}
        raw = f["meta"][row]
        return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)

    def shard_files(self) -> list[Path]:
        """The committed shard files, in index order."""
        self._ensure_index()
        return list(self._shards)

    def close(self) -> None:
        """Close this process's file handles (the store stays usable: they re-open on the next read)."""
        if self._pid == os.getpid():
            for f in self._files:
                if f is not None:
                    f.close()
            for fd in self._fds:
                if fd is not None:
                    os.close(fd)
        self._files, self._fds = [None] * len(self._shards), [None] * len(self._shards)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])

    def __repr__(self) -> str:
        return f"PageStore({str(self.path)!r})"
