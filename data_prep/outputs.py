"""Writing outputs so that a full disk (or a kill) never leaves a torn file that a rerun would trust.

* :func:`atomic_output`: a whole file (state, checkpoint part, metrics): written to ``PATH.tmp``, fsynced, renamed
  over ``PATH``. If anything fails the tmp file is removed and ``PATH`` keeps its previous contents; a full disk is
  raised as :class:`~data_prep.errors.DiskFullError` naming ``PATH``, also through C writers that hide the
  ``OSError`` (``torch.save`` reports only "unexpected pos"), because the file object records it.
* :class:`JsonlAppender`: a JSONL output that a long job appends to line by line and resumes from (generated
  queries, mined pairs): every line is flushed whole; a line cut by a full disk is truncated away at once and a
  line torn by a kill is truncated when the file is reopened, so the file only ever holds complete lines.
* :func:`check_outputs`: every CLI calls it before writing anything, so an output path that names one of the
  command's inputs (the same file, a file inside an input directory such as a page store or a model, or the
  same path given to two outputs) is refused with one line instead of destroying the input; so is an output that
  cannot be written (a directory given as a file or the reverse, a path under a file, a directory without write
  permission).
* :func:`check_settings` / :func:`record_settings`: the settings that produced a resumable state (a page store's
  rendering, a queries journal's model and decoding) are recorded beside it; a rerun with other settings is
  refused with one line naming each difference instead of mixing two kinds of output in one file.
* :func:`lock_directory`: an exclusive ``flock`` on ``DIR/.lock`` for a job that owns a directory (a page store's
  writer, a training run's ``--output_dir``); a second job on the same directory stops with :class:`BusyError`
  instead of interleaving its files with the first one's. The lock dies with its process, so a ``kill -9`` leaves
  nothing to clean up.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from data_prep.errors import DiskFullError, InputError, UserError, is_disk_full, read_json_input, stop_on_full_disk

__all__ = ["BusyError", "JsonlAppender", "atomic_output", "check_outputs", "check_settings", "flag_paths",
           "lock_directory", "record_settings", "settings_changes", "write_text_atomic"]

logger = logging.getLogger(__name__)
RESUME_HINT = "free space and run the same command again to resume"


class _RecordingFile:
    """A binary file whose ``write`` remembers the ``OSError`` it raised (C writers turn it into a vague error)."""

    def __init__(self, handle) -> None:
        self.handle, self.error = handle, None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, kept: str = f"its previous version is intact; {RESUME_HINT}",
                  ) -> Iterator[_RecordingFile]:
    """Write ``path`` all or nothing: yields a binary file; see the module docstring."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    recorder = None
    try:
        with stop_on_full_disk(path, kept):
            try:
                with open(tmp, "wb") as handle:
                    recorder = _RecordingFile(handle)
                    yield recorder
                    handle.flush()
                    os.fsync(handle.fileno())
            except (OSError, RuntimeError) as err:
                if recorder is not None and recorder.error is not None and not is_disk_full(err):
                    raise recorder.error from err
                raise
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str, kept: str = f"its previous version is intact; {RESUME_HINT}",
                      ) -> None:
    """``path.write_text(text)``, all or nothing (see :func:`atomic_output`)."""
    with atomic_output(path, kept) as handle:
        handle.write(text.encode("utf-8"))


class JsonlAppender:
    """Append JSON objects to ``path`` one complete line at a time (see the module docstring).

    ``fsync=True`` syncs every line (failure logs); otherwise lines are flushed, and a kill loses at most what the
    OS had not written, never more than whole lines plus one torn line, which the next open removes.
    """

    def __init__(self, path: str | os.PathLike, fsync: bool = False) -> None:
        self.path, self.fsync = Path(path), fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_torn_line()
        self._fh = open(self.path, "ab")
        self.lines_written = 0

    def _drop_torn_line(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as fh:
            data = fh.read()
            if not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                logger.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run",
                               self.path, len(data) - keep)
                fh.truncate(keep)

    def write(self, record: dict[str, Any]) -> None:
        """Append one line; on a full disk the partial line is removed and ``DiskFullError`` raised."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        start = self._fh.tell()
        try:
            self._fh.write(line)
            self._fh.flush()
            if self.fsync:
                os.fsync(self._fh.fileno())
        except OSError as err:
            if not is_disk_full(err):
                raise
            self._fh = reopen_truncated(self._fh, self.path, start)
            raise DiskFullError(f"{self.path}: no space left to write it ({os.strerror(err.errno or 28)}); every "
                                f"line written before is intact; {RESUME_HINT}") from err
        self.lines_written += 1

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reopen_truncated(handle: IO[bytes], path: Path, size: int) -> IO[bytes]:
    """Drop a partial write: close ``handle`` (its buffer may still hold unwritten bytes), cut ``path`` back to
    ``size`` bytes and return a new append handle."""
    with contextlib.suppress(OSError):
        handle.close()
    os.truncate(path, size)
    return open(path, "ab")


PathArg = str | os.PathLike | None


def _same_or_inside(path: Path, other: Path) -> bool:
    """``path`` is ``other`` (also through a hard link) or lies inside the directory ``other``."""
    if path == other or other in path.parents:
        return True
    try:
        return os.path.samefile(path, other)
    except OSError:
        return False


def check_outputs(outputs: Mapping[str, PathArg], inputs: Mapping[str, PathArg],
                  directories: Collection[str] = ()) -> None:
    """Refuse, before anything is written, an output that would overwrite an input or another output, or that
    cannot be written where it is.

    ``outputs`` and ``inputs`` map a flag name (``"--out"``) to its path (``None``: not given). An output is
    refused when it is an input (same path after resolving links, or the same file through a hard link), when it
    lies inside an input directory (a page store's shard, a file of the model being exported), when an input lies
    inside an output directory, or when two outputs name the same path.

    ``directories`` names the output flags that are directories (a page store, a training run); every other output
    is a file. An output is also refused when it is of the other kind (an existing directory given as a file, an
    existing file given as a directory), when a path above it is a file, or when it lies in a directory this user
    may not write to.
    """
    outs = [(flag, Path(path).resolve()) for flag, path in outputs.items() if path is not None]
    ins = [(flag, Path(path).resolve()) for flag, path in inputs.items() if path is not None]
    for i, (flag, out) in enumerate(outs):
        for other_flag, other in outs[i + 1:]:
            if out == other:
                raise InputError(f"{out}: given as both {flag} and {other_flag}; each output needs its own path")
        for in_flag, source in ins:
            if _same_or_inside(out, source):
                where = "is" if out == source or os.path.exists(out) and os.path.samefile(out, source) else "is inside"
                raise InputError(f"{out}: {flag} {where} the input {in_flag} ({source}); writing it would destroy "
                                 "the input: choose another output path")
            if out in source.parents:
                raise InputError(f"{out}: {flag} contains the input {in_flag} ({source}); writing it could destroy "
                                 "the input: choose another output path")
    for flag, out in outs:
        _check_writable(flag, out, flag in directories)


def flag_paths(flag: str, paths: Sequence[PathArg]) -> dict[str, PathArg]:
    """``{flag: path}`` for the paths of a flag that takes several (``--pairs``, ``--pairs (2)``, ...), for
    :func:`check_outputs`."""
    return {flag if i == 0 else f"{flag} ({i + 1})": path for i, path in enumerate(paths)}


def _check_writable(flag: str, path: Path, directory: bool) -> None:
    """``path`` (resolved) can be written as a directory (``directory``) or as a file; see :func:`check_outputs`."""
    if path.is_dir() and not directory:
        raise InputError(f"{path}: {flag} is a directory, expected a file: give a file path")
    if path.exists() and not path.is_dir() and directory:
        raise InputError(f"{path}: {flag} is a file, expected a directory: give a directory path")
    if path.exists() and not os.access(path, os.W_OK | (os.X_OK if directory else 0)):
        raise InputError(f"{path}: {flag}: no permission to write it: give a path you may write")
    above = next((parent for parent in path.parents if parent.exists()), path)
    if not above.is_dir():
        raise InputError(f"{path}: {flag} cannot be created: {above} is a file, not a directory")
    if not (directory and path.exists()) and not os.access(above, os.W_OK | os.X_OK):  # files are replaced by rename
        raise InputError(f"{path}: {flag}: no permission to write in {above}: give a path you may write")


def check_settings(record: Path, settings: Mapping[str, Any], resuming: bool, state: str) -> None:
    """Refuse to resume ``state`` (``"page store work/store"``) when ``record``, the settings it was made with,
    differs from this run's ``settings`` (``{flag: value}``; a flag missing from either side is not compared).

    ``resuming``: the state holds output already (otherwise nothing is compared and the caller records the new
    settings with :func:`record_settings`). A state without a record (made before records existed) is resumed
    with a warning.
    """
    if not resuming:
        return
    if not record.exists():
        logger.warning("%s: no record of the settings it was made with (%s is missing); resuming it with this "
                       "run's settings", state, record)
        return
    saved = read_json_input(record, "settings record")
    if not isinstance(saved, dict):
        raise InputError(f"{record}: not a settings record (a JSON object of flags); delete it to resume {state} "
                         "with this run's settings")
    changed = settings_changes(saved, settings)
    if changed:
        raise InputError(f"{record}: {state} was made with other settings than this run: {', '.join(changed)}; "
                         "resuming would mix the outputs of both: write to a new output path, or rerun with the "
                         "settings it was made with")


def settings_changes(saved: Mapping[str, Any], settings: Mapping[str, Any]) -> list[str]:
    """Each setting of ``saved`` (as read back from JSON) that this run's ``settings`` gives another value, as
    ``"KEY SAVED (this run: NOW)"``; a key missing from either side is not compared."""
    now = json.loads(json.dumps(dict(settings)))  # compared as they were stored: tuples become lists
    return [f"{key} {saved[key]!r} (this run: {now[key]!r})" for key in sorted(saved.keys() & now.keys())
            if saved[key] != now[key]]


def record_settings(record: Path, settings: Mapping[str, Any]) -> None:
    """Write ``settings`` as the record beside a state (all or nothing), for :func:`check_settings`."""
    write_text_atomic(record, json.dumps(dict(settings), indent=1, sort_keys=True) + "\n")


class BusyError(UserError, RuntimeError):
    """A directory that another running process holds the lock of."""


def lock_directory(directory: Path, busy: str, error: type[BusyError] = BusyError) -> IO[str]:
    """Take the exclusive lock ``directory/.lock`` (see the module docstring) and return its handle, which holds
    the lock until it is closed; raises ``error(busy)`` when another process holds it."""
    handle = open(directory / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise error(busy) from None
    return handle
