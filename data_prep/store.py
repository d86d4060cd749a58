"""HDF5 page stores: encoded page images addressed by page id, in one or several shard files.

Layout
    A store is a directory ``STORE/`` holding committed shards ``shard-00000.h5``, ``shard-00001.h5``, ...
    (a single ``.h5`` file is also a valid store). Each shard holds n pages in four datasets:

    * ``ids``     -- n variable-length UTF-8 strings, the page ids (the id index);
    * ``data``    -- one contiguous, uncompressed 1-D ``uint8`` dataset: the encoded images (JPEG / PNG / WebP)
      exactly as written, back to back (a ragged array);
    * ``offsets`` -- n+1 ``int64``: page i is ``data[offsets[i]:offsets[i+1]]``;
    * ``meta``    -- n variable-length UTF-8 strings, one JSON object per page (source, page, width, height, dpi).

    Never one HDF5 dataset per page (wide groups are slow to open and to list). A ragged ``uint8`` array was
    chosen over an HDF5 variable-length ``uint8`` dataset because it reads 4x faster through h5py (no global-heap
    lookups) and, being contiguous, lets the reader ``pread`` a page straight from the file at the dataset's
    offset (``DatasetID.get_offset()``), which is faster than opening one image file per page
    (``bench/render.py``). Any HDF5 tool can still read it: ``f["data"][o[i]:o[i+1]]``.

Crash safety (writer)
    ``PageStoreWriter`` buffers pages in memory and commits a shard only when it is full (or on ``close``): it
    writes ``shard-NNNNN.h5.tmp``, fsyncs it and renames it to ``shard-NNNNN.h5``, then fsyncs the directory.
    A ``kill -9`` therefore loses at most the uncommitted buffer and never leaves a half-written ``.h5`` that a
    reader would open; leftover ``.tmp`` files are deleted when a writer next opens the store. The committed
    shards are the journal of finished pages: ``writer.has(page_id)`` tells a resuming job what to skip.
    An exclusive ``flock`` on ``STORE/.lock`` refuses a second concurrent writer with a clear error.

Reading (``PageStore``)
    Lazy and fork-safe: nothing is opened in ``__init__``. The id index (id -> shard, row) is built on first use;
    file handles (a raw fd for page bytes, h5py for metadata) are opened on first read *in each process* and
    re-opened when the pid changes, so a store created in the parent works inside forked or spawned DataLoader
    workers. Pickling drops handles and index.

Corruption
    A shard damaged after its commit (an interrupted copy, a full disk elsewhere, a replaced file) raises
    ``CorruptStoreError`` naming the shard and the problem: truncated, not HDF5, missing datasets, offsets past
    the data, or a page whose bytes do not decode. ``verify_store`` checks every shard and decodes every page
    (``python -m data_prep.inspect STORE --verify``); ``PageStoreWriter(..., repair=True)`` (what
    ``data_prep.render`` does on resume) moves a corrupt shard aside into ``STORE/corrupt/`` -- never deleting it --
    so that its pages are no longer committed and get written again.

Page ids
    Chosen by the producer; render uses ``"<doc_id>/<page_no>"`` (1-based page number, doc id = the PDF's path
    relative to the input root without ``.pdf``), see ``data_prep.page_list``. Ids must be unique within a store.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
from PIL import Image

from data_prep.errors import DiskFullError, InputError, MissingInputError, UserError, stop_on_full_disk
from data_prep.images import ImageDecodeError, decode_image

SHARD_GLOB = "shard-*.h5"
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.h5$")
_ASIDE_RE = re.compile(r"^shard-(\d{5,})\.h5(?:\.\d+)?$")
FORMAT_VERSION = 2
_STR = h5py.string_dtype("utf-8")
CORRUPT_DIR = "corrupt"
REPAIR_HINT = ("check the whole store with `python -m data_prep.inspect STORE --verify`; re-running data_prep.render "
               "on it moves corrupt shards aside and renders their pages again")
logger = logging.getLogger(__name__)


class CorruptStoreError(InputError):
    """A shard, or a page in it, that cannot be read; the message names the shard, the page and the problem."""

    def __init__(self, message: str, shard: Path | None = None, problem: str | None = None,
                 page_id: str | None = None) -> None:
        super().__init__(message)  # one positional argument: DataLoader workers re-raise it as type(err)(message)
        self.shard, self.problem, self.page_id = shard, problem or message, page_id


def corrupt(shard: Path, problem: str, page_id: str | None = None) -> CorruptStoreError:
    where = f"page store shard {shard}" + (f": page {page_id!r}" if page_id is not None else "")
    return CorruptStoreError(f"{where}: {problem}; {REPAIR_HINT}", shard, problem, page_id)


class StoreBusyError(UserError, RuntimeError):
    """A second writer on a store that another process is writing."""


class UnknownPageError(UserError, KeyError):
    """Raised for a page id that the store does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def shard_paths(path: str | os.PathLike) -> list[Path]:
    """Committed shard files of a store: the file itself, or the sorted ``shard-*.h5`` (and other ``*.h5``) of a dir."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise MissingInputError(f"page store not found: {p} (expected an .h5 file or a directory of shards)")
    return sorted(q for q in p.glob("*.h5") if q.is_file())



@dataclass(frozen=True)
class ShardIndex:
    """What a reader needs of one shard: its page ids, their n+1 byte offsets, the file position of ``data``."""

    ids: list[str]
    offsets: np.ndarray
    data_pos: int | None  # None: data not contiguous (chunked/compressed by another tool), read through HDF5


_TRUNCATED = re.compile(r"truncated file: eof = (\d+).*stored_eof = (\d+)")


def _open_problem(err: OSError) -> str:
    """Why h5py could not open a shard, in words."""
    text = str(err)
    if m := _TRUNCATED.search(text):
        return (f"truncated: the file has {int(m.group(1))} of its {int(m.group(2))} bytes (an interrupted copy or "
                "a full disk)")
    if "file signature not found" in text:
        return "not an HDF5 file"
    return f"cannot be opened as HDF5 ({text})"


def read_shard_index(shard: Path) -> ShardIndex:
    """Ids, offsets and data position of one shard, checked; ``CorruptStoreError`` naming the shard otherwise."""
    try:
        f = h5py.File(shard, "r")
    except OSError as err:
        raise corrupt(shard, _open_problem(err)) from None
    with f:
        missing = [name for name in ("ids", "data", "offsets") if name not in f]
        if missing:
            raise corrupt(shard, f"missing dataset(s) {', '.join(missing)} (a shard holds ids, data, offsets, meta)")
        try:
            ids, offsets, data = list(f["ids"].asstr()[()]), f["offsets"][()], f["data"]
            n_data, data_pos = int(data.shape[0]) if data.ndim == 1 else -1, data.id.get_offset()
        except (OSError, RuntimeError, ValueError) as err:
            raise corrupt(shard, f"unreadable datasets ({err})") from None
    _check_offsets(shard, ids, offsets, n_data)
    if data_pos is not None and data_pos + n_data > shard.stat().st_size:
        raise corrupt(shard, f"truncated: the data ends at byte {data_pos + n_data} but the file has "
                      f"{shard.stat().st_size} bytes")
    return ShardIndex(ids, offsets, data_pos)


def _check_offsets(shard: Path, ids: list[str], offsets: np.ndarray, n_data: int) -> None:
    if n_data < 0:
        raise corrupt(shard, "the data dataset is not one-dimensional")
    if offsets.ndim != 1 or len(offsets) != len(ids) + 1:
        raise corrupt(shard, f"{len(ids)} ids but {len(offsets)} offsets (expected n+1)")
    if len(offsets) and offsets[0] != 0:
        raise corrupt(shard, f"offsets start at {int(offsets[0])}, not 0")
    if (steps := np.flatnonzero(np.diff(offsets) < 0)).size:
        raise corrupt(shard, f"offsets decrease at page {ids[steps[0]]!r}", ids[steps[0]])
    if (past := np.flatnonzero(offsets[1:] > n_data)).size:
        row = int(past[0])
        raise corrupt(shard, f"offsets past the data: the page ends at byte {int(offsets[row + 1])} but the data "
                      f"holds {n_data} bytes", ids[row])


@dataclass
class Problem:
    """One finding of :func:`verify_store`: a shard, optionally a page in it, and what is wrong."""

    shard: str
    problem: str
    page: str | None = None


@dataclass
class StoreReport:
    """The result of :func:`verify_store`; ``ok`` when nothing is wrong."""

    path: str
    shards: int = 0
    pages: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def corrupt_shards(self) -> dict[str, str]:
        """Shard -> its first problem."""
        found: dict[str, str] = {}
        for p in self.problems:
            found.setdefault(p.shard, p.problem if p.page is None else f"page {p.page!r}: {p.problem}")
        return found


def verify_store(path: str | os.PathLike, decode: bool = True,
                 on_page: Callable[[], None] | None = None) -> StoreReport:
    """Check every shard (opens, datasets, offsets, ids unique across shards) and, with ``decode``, decode every
    page; ``on_page`` is called once per page checked (progress). Never raises for a corrupt shard: it reports it."""
    report = StoreReport(str(path))
    indexes: dict[Path, ShardIndex] = {}
    for shard in shard_paths(path):
        report.shards += 1
        try:
            indexes[shard] = read_shard_index(shard)
        except CorruptStoreError as err:
            report.problems.append(Problem(str(shard), err.problem))
    report.pages = sum(len(entry.ids) for entry in indexes.values())
    seen: dict[str, Path] = {}
    for shard, entry in indexes.items():
        for pid in entry.ids:
            if pid in seen:
                report.problems.append(Problem(str(shard), f"page id also in {seen[pid]} (a copied shard?)", pid))
            seen.setdefault(pid, shard)
        if decode:
            report.problems += _decode_pages(shard, entry.ids, on_page)
    return report


def _decode_pages(shard: Path, ids: list[str], on_page: Callable[[], None] | None) -> list[Problem]:
    """Decode every page of one shard through the reader, as training and evaluation will."""
    store, problems = PageStore(shard), []
    try:
        for pid in ids:
            try:
                store.get_image(pid)
            except CorruptStoreError as err:
                problems.append(Problem(str(shard), err.problem, pid))
            if on_page is not None:
                on_page()
    finally:
        store.close()
    return problems


class PageStore:
    """Read-only access to a page store by page id (see the module docstring for layout and fork safety)."""

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
        except ImageDecodeError as err:
            raise corrupt(self._shards[self._locate(page_id)[0]], f"its {len(data)} bytes do not decode as an "
                          f"image ({err.reason})", page_id) from None

    def meta(self, page_id: str) -> dict[str, Any]:
        """Per-page metadata (source, page, width, height, dpi, format, ...); ``{}`` for shards without ``meta``."""
        si, row = self._locate(page_id)
        f = self._file(si)
        if "meta" not in f:
            return {}
        raw = f["meta"][row]
        return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)

    def shard_files(self) -> list[Path]:
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


def _free_name(path: Path) -> Path:
    """``path``, or ``path.1``, ``path.2``... whichever does not exist yet."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        self._lock = open(self.path / ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StoreBusyError(f"page store {self.path} is being written by another process; wait for it to end") \
                from None
        for tmp in self.path.glob("shard-*.h5.tmp"):  # uncommitted leftovers of a killed run
            tmp.unlink()
        self.set_aside: list[tuple[Path, Path, str]] = []  # (shard, where it went, why)
        if repair:
            self._set_aside_corrupt(decode, on_page)
        self._committed: set[str] = set(PageStore(self.path).ids()) if shard_paths(self.path) else set()
        numbers = [int(m.group(1)) for q in self.path.glob(SHARD_GLOB) if (m := _SHARD_RE.match(q.name))]
        aside = [int(m.group(1)) for q in (self.path / CORRUPT_DIR).glob("shard-*") if (m := _ASIDE_RE.match(q.name))]
        self._next_shard = max(numbers + aside, default=-1) + 1
        self._buf_ids: list[str] = []
        self._buf_data: list[bytes] = []
        self._buf_meta: list[str] = []
        self._buf_set: set[str] = set()
        self._buf_bytes = 0
        self._disk_full = False
        self.pages_written = 0

    def _set_aside_corrupt(self, decode: bool, on_page: Callable[[], None] | None) -> None:
        """Move every corrupt shard into ``STORE/corrupt/`` (never deleted: the user decides)."""
        report = verify_store(self.path, decode, on_page)
        for shard, problem in report.corrupt_shards().items():
            source = Path(shard)
            target = _free_name(self.path / CORRUPT_DIR / source.name)
            target.parent.mkdir(exist_ok=True)
            os.replace(source, target)
            _fsync_dir(self.path)
            logger.warning("set aside corrupt shard %s -> %s (%s)", source, target, problem)
            self.set_aside.append((source, target, problem))

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
        final = self.path / f"shard-{self._next_shard:05d}.h5"
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
        _fsync_dir(self.path)
        self._committed.update(self._buf_ids)
        self.pages_written += n
        self._next_shard += 1
        self._buf_ids, self._buf_data, self._buf_meta, self._buf_set, self._buf_bytes = [], [], [], set(), 0
        return final

    def _write_shard(self, tmp: Path, offsets: np.ndarray) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["format_version"] = FORMAT_VERSION
            f.create_dataset("ids", data=np.array(self._buf_ids, dtype=object), dtype=_STR)
            f.create_dataset("data", data=np.frombuffer(b"".join(self._buf_data), dtype=np.uint8))  # contiguous
            f.create_dataset("offsets", data=offsets)
            f.create_dataset("meta", data=np.array(self._buf_meta, dtype=object), dtype=_STR)
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
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> "PageStoreWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
