"""The on-disk format of a page store: shard files, their datasets, and the check every reader applies to them.

Layout
    A store is a directory ``STORE/`` holding committed shards ``shard-00000.h5``, ``shard-00001.h5``, ...
    (a single ``.h5`` file is also a valid store). Each shard holds n pages in four datasets:

    * ``ids``     -- n variable-length UTF-8 strings, the page ids (the id index);
    * ``data``    -- one contiguous, uncompressed 1-D ``uint8`` dataset: the encoded images (JPEG / PNG / WebP)
      exactly as written, back to back (a ragged array);
    * ``offsets`` -- n+1 ``int64``: page i is ``data[offsets[i]:offsets[i+1]]``;
    * ``meta``    -- n variable-length UTF-8 strings, one JSON object per page (source, page, width, height, dpi).

    The file attribute ``format_version`` is :data:`FORMAT_VERSION`. Never one HDF5 dataset per page (wide groups
    are slow to open and to list). A ragged ``uint8`` array was chosen over an HDF5 variable-length ``uint8``
    dataset because it reads 4x faster through h5py (no global-heap lookups) and, being contiguous, lets the reader
    ``pread`` a page straight from the file at the dataset's offset (``DatasetID.get_offset()``), which is faster
    than opening one image file per page (``bench/render.py``). Any HDF5 tool can still read it:
    ``f["data"][o[i]:o[i+1]]``.

Checked reading
    :func:`read_shard_index` is the one place a shard is opened and checked against this layout (opens as HDF5,
    has its datasets, offsets consistent with the data and the file size); a shard that breaks it raises
    :class:`CorruptStoreError` naming the shard and the problem, for the reader and for ``verify_store`` alike.

Page ids
    Chosen by the producer; render uses ``"<doc_id>/<page_no>"`` (1-based page number, doc id = the PDF's path
    relative to the input root without ``.pdf``), see ``data_prep.page_list``. Ids must be unique within a store.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from data_prep.errors import InputError, MissingInputError

FORMAT_VERSION = 2
TEXT_DTYPE = h5py.string_dtype("utf-8")  # the ``ids`` and ``meta`` datasets
SHARD_GLOB = "shard-*.h5"
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.h5$")
_TRUNCATED = re.compile(r"truncated file: eof = (\d+).*stored_eof = (\d+)")
REPAIR_HINT = ("check the whole store with `python -m data_prep.inspect STORE --verify`; re-running data_prep.render "
               "on it moves corrupt shards aside and renders their pages again")


class CorruptStoreError(InputError):
    """A shard, or a page in it, that cannot be read; the message names the shard, the page and the problem."""

    def __init__(self, message: str, shard: Path | None = None, problem: str | None = None,
                 page_id: str | None = None) -> None:
        super().__init__(message)  # one positional argument: DataLoader workers re-raise it as type(err)(message)
        self.shard, self.problem, self.page_id = shard, problem or message, page_id


def corrupt(shard: Path, problem: str, page_id: str | None = None) -> CorruptStoreError:
    """The error for ``shard`` (and ``page_id`` in it) having ``problem``, with the hint on how to repair it."""
    where = f"page store shard {shard}" + (f": page {page_id!r}" if page_id is not None else "")
    return CorruptStoreError(f"{where}: {problem}; {REPAIR_HINT}", shard, problem, page_id)


def shard_name(number: int) -> str:
    """The file name of committed shard ``number``."""
    return f"shard-{number:05d}.h5"


def shard_numbers(directory: Path) -> list[int]:
    """The numbers of the committed ``shard-NNNNN.h5`` files in ``directory``."""
    return [int(m.group(1)) for q in directory.glob(SHARD_GLOB) if (m := _SHARD_RE.match(q.name))]


def shard_paths(path: str | os.PathLike) -> list[Path]:
    """Committed shard files of a store: the file itself, or the sorted ``shard-*.h5`` (and other ``*.h5``) of a dir."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise MissingInputError(f"page store not found: {p} (expected an .h5 file or a directory of shards)")
    return sorted(q for q in p.glob("*.h5") if q.is_file())


def fsync_dir(path: Path) -> None:
    """Make the renames in directory ``path`` durable (a shard committed or set aside)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ShardIndex:
    """What a reader needs of one shard: its page ids, their n+1 byte offsets, the file position of ``data``."""

    ids: list[str]
    offsets: np.ndarray
    data_pos: int | None  # None: data not contiguous (chunked/compressed by another tool), read through HDF5


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
