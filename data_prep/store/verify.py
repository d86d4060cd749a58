"""Verifying a page store (``verify_store``): every shard checked, optionally every page decoded, nothing raised.

A shard damaged after its commit (an interrupted copy, a full disk elsewhere, a replaced file) is found here and
reported, never raised: truncated, not HDF5, missing datasets, offsets past the data (the checks of
:func:`data_prep.store.format.read_shard_index`), page ids repeated across shards (a copied shard), or, with
``decode``, a page whose bytes do not decode -- decoded through :class:`~data_prep.store.reader.PageStore`, exactly
as training and evaluation will read it. ``python -m data_prep.inspect STORE --verify`` prints the report;
``data_prep.store.repair`` acts on it.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.store.format import CorruptStoreError, ShardIndex, read_shard_index, shard_paths
from data_prep.images import ClipNotPageError, ImageDecodeError, decode_frames
from data_prep.store.reader import PageStore


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
            except ClipNotPageError:  # a video clip: every frame must decode
                try:
                    decode_frames(store.get_bytes(pid), pid)
                except ImageDecodeError as err:
                    problems.append(Problem(str(shard), f"clip frames do not decode ({err.reason})", pid))
            except CorruptStoreError as err:
                problems.append(Problem(str(shard), err.problem, pid))
            if on_page is not None:
                on_page()
    finally:
        store.close()
    return problems
