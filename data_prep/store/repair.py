"""Repairing a page store: corrupt shards moved aside into ``STORE/corrupt/``, never deleted.

``PageStoreWriter(..., repair=True)`` (what ``data_prep.render`` does on resume) calls :func:`set_aside_corrupt`
before reading which pages are committed: every shard that ``verify_store`` reports is renamed into
``STORE/corrupt/`` (as ``NAME``, or ``NAME.1``, ``NAME.2``... if that is taken), so that its pages no longer count
as written and get written again; the user deletes the set-aside files once the store verifies. A shard number
set aside is never reused (:func:`aside_numbers`), so a new shard cannot be confused with the one it replaces.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

from data_prep.store.format import fsync_dir
from data_prep.store.verify import verify_store

CORRUPT_DIR = "corrupt"
_ASIDE_RE = re.compile(r"^shard-(\d{5,})\.h5(?:\.\d+)?$")
logger = logging.getLogger(__name__)


def set_aside_corrupt(store: Path, decode: bool = True,
                      on_page: Callable[[], None] | None = None) -> list[tuple[Path, Path, str]]:
    """Verify the store directory (``decode``, ``on_page`` as for ``verify_store``) and move every corrupt shard
    into ``STORE/corrupt/``; returns (shard, where it went, why) for each."""
    moved = []
    for shard, problem in verify_store(store, decode, on_page).corrupt_shards().items():
        source = Path(shard)
        target = _free_name(store / CORRUPT_DIR / source.name)
        target.parent.mkdir(exist_ok=True)
        os.replace(source, target)
        fsync_dir(store)
        logger.warning("set aside corrupt shard %s -> %s (%s)", source, target, problem)
        moved.append((source, target, problem))
    return moved


def aside_numbers(store: Path) -> list[int]:
    """The shard numbers of the shards set aside in ``STORE/corrupt/``."""
    return [int(m.group(1)) for q in (store / CORRUPT_DIR).glob("shard-*") if (m := _ASIDE_RE.match(q.name))]


def _free_name(path: Path) -> Path:
    """``path``, or ``path.1``, ``path.2``... whichever does not exist yet."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate
