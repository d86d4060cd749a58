"""The command-line error convention: a user error is one line and exit status 2; a bug keeps its traceback.

Every ``python -m <package>.<tool>`` entry point is wrapped once::

    from data_prep.errors import cli

    @cli
    def main(argv: Sequence[str] | None = None) -> None:
        ...

When ``main`` raises a :class:`UserError` (bad input, a missing or corrupt file, an unknown id, contradicting flags,
an unreachable server, a full disk), :func:`cli` prints ``error: <message>`` on stderr and exits with status 2
(under torchrun every rank does, naming its rank). Any other exception is a bug and propagates with its traceback
(exit status 1). ``VLMRET_DEBUG=1`` in the environment, or ``--debug`` anywhere on the command line (removed before
``main`` parses its arguments), shows the traceback of user errors too.

Which exceptions are user errors
    Instances of :class:`UserError`, raised where an input is validated, with a message that names the file, line
    or id and suggests the fix. Each subclass keeps the built-in it stands for as a second base
    (:class:`InputError` is a ``ValueError``, :class:`MissingInputError` a ``FileNotFoundError``,
    :class:`DiskFullError` an ``OSError``), so library code that catches the built-in keeps working.

    One built-in is mapped deliberately: an ``OSError`` whose errno is ENOSPC, EDQUOT or EFBIG (no space left, quota
    exceeded, file-size limit), wherever it was raised: a full disk is never a bug. A plain ``FileNotFoundError``,
    ``ValueError`` or ``KeyError`` is *not* mapped, because a bug raises those too; an input that may be missing is
    opened with :func:`open_input`, which raises :class:`MissingInputError`, and a text input is read with
    :func:`read_text_input` or :func:`iter_text_lines`, which name the file and the line of bytes that are not
    UTF-8.

Full disks
    Long jobs write through :func:`stop_on_full_disk`, which turns a failed write (also when HDF5 or torch report it
    only in their message) into a :class:`DiskFullError` naming the file and saying what was kept and how to resume.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn, TypeVar

__all__ = ["DEBUG_ENV", "DiskFullError", "InputError", "MissingInputError", "UserError", "cli", "decode_text",
           "is_disk_full", "iter_text_lines", "open_input", "read_json_input", "read_text_input", "stop_on_full_disk"]

DEBUG_ENV = "VLMRET_DEBUG"
EXIT_USER_ERROR = 2
R = TypeVar("R")

_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# how C libraries report a failed write in their message only: HDF5 ("errno = 28, error message = 'No space left
# on device'"), safetensors ("No space left on device (os error 28)"), torch's zip writer, which only notices that
# fewer bytes were written than it asked for ("unexpected pos 576 vs 534", "file write failed")
_DISK_FULL_TEXT = re.compile(r"No space left on device|Disk quota exceeded|File too large|errno = (?:28|27|122)\b"
                             r"|os error (?:28|27|122)\b|file write failed|unexpected pos \d+ vs \d+")


class UserError(Exception):
    """An error the user can fix; its message is the one line the command prints."""


class InputError(UserError, ValueError):
    """An input (file, line, id, flag) that cannot be used."""


class MissingInputError(UserError, FileNotFoundError):
    """An input path that does not exist."""


class DiskFullError(UserError, OSError):
    """A write that failed for lack of space (or quota, or the file-size limit); what was committed is intact."""


def stop_on_sigterm() -> None:
    """Make SIGTERM (slurm, ``kill``) raise ``KeyboardInterrupt``, so a long tool stops as on Ctrl-C, its outputs
    kept."""
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def is_disk_full(err: BaseException) -> bool:
    """True for an error caused by a full disk, an exceeded quota or the file-size limit (for errors without an
    errno, judged from the message: use it on errors raised by a write, as :func:`stop_on_full_disk` does)."""
    if isinstance(err, OSError) and err.errno in _DISK_FULL_ERRNOS:
        return True
    return isinstance(err, (OSError, RuntimeError)) and bool(_DISK_FULL_TEXT.search(str(err)))


@contextlib.contextmanager
def stop_on_full_disk(target: str | os.PathLike, kept: str) -> Iterator[None]:
    """Re-raise a full-disk failure inside the block as :class:`DiskFullError` naming ``target``.

    ``kept`` says what survived and how to go on, e.g. ``"committed shards are intact; free space and run the
    same command again to resume"``.
    """
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, RuntimeError) as err:
        if not is_disk_full(err):
            raise
        raise DiskFullError(f"{target}: no space left to write it ({_reason(err)}); {kept}") from err


def _reason(err: BaseException) -> str:
    """The errno's words, also when a C library put the number in its message only."""
    number = err.errno if isinstance(err, OSError) and err.errno else None
    if number is None and (m := re.search(r"errno = (\d+)|os error (\d+)", str(err))):
        number = int(m.group(1) or m.group(2))
    return os.strerror(number) if number else "the write failed"


def open_input(path: str | os.PathLike, what: str, mode: str = "r") -> IO[Any]:
    """Open an input file for reading; a missing one raises :class:`MissingInputError` naming ``what`` it is."""
    try:
        return open(path, mode, encoding=None if "b" in mode else "utf-8")
    except FileNotFoundError:
        raise MissingInputError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{what} {path} is a directory, expected a file") from None


def decode_text(data: bytes, path: str | os.PathLike, what: str, first_line: int = 1) -> str:
    """``data`` decoded as UTF-8; bytes that are not raise :class:`InputError` naming the file and the line (``data``
    starts at line ``first_line`` of ``path``)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first_line + data.count(b"\n", 0, err.start)
        raise InputError(f"{path}: line {line}: {what} is not UTF-8 text ({err.reason} 0x{data[err.start]:02x}); "
                         "convert it to UTF-8") from None


def read_text_input(path: str | os.PathLike, what: str) -> str:
    """The whole text of a UTF-8 input file (missing, a directory or not UTF-8: one-line user errors)."""
    with open_input(path, what, "rb") as fh:
        return decode_text(fh.read(), path, what)


def iter_text_lines(path: str | os.PathLike, what: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 input file, read lazily; a line that is not UTF-8 is a one-line error."""
    with open_input(path, what, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            yield number, decode_text(raw, path, what, number)


def read_json_input(path: str | os.PathLike, what: str) -> Any:
    """The JSON value of an input file: missing -> :class:`MissingInputError`, malformed or not UTF-8 ->
    :class:`InputError` naming the file, the line and ``what`` it is."""
    text = read_text_input(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: line {err.lineno}: invalid JSON in {what}: {err.msg}") from None


def is_user_error(err: BaseException) -> bool:
    return isinstance(err, UserError) or (isinstance(err, OSError) and err.errno in _DISK_FULL_ERRNOS)


def error_line(err: BaseException) -> str:
    """The one line printed for a user error (a DataLoader worker's error carries its traceback: keep its end)."""
    text = str(err).strip()
    if "Original Traceback" in text:  # torch re-raises worker errors as type(err)(message + worker traceback)
        text = text.splitlines()[-1].split(": ", 1)[-1]
    world, rank = os.environ.get("WORLD_SIZE", "1"), os.environ.get("RANK", "0")
    prefix = f"rank {rank}/{world}: " if world != "1" else ""
    return f"error: {prefix}{' '.join(text.split())}"


def _debug_requested(args: list[str]) -> bool:
    return "--debug" in args or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def _exit_user_error(err: BaseException) -> NoReturn:
    print(error_line(err), file=sys.stderr, flush=True)
    record = os.environ.get("VLMRET_ERROR_FILE")
    if record:  # set by shell/torchrun.sh, so that the launcher script can exit with 2 as well
        with contextlib.suppress(OSError):
            Path(record).write_text(error_line(err) + "\n")
    raise SystemExit(EXIT_USER_ERROR)


def cli(main: Callable[[list[str]], R]) -> Callable[[Sequence[str] | None], R]:
    """Wrap a tool's ``main(argv)`` in the error convention (see the module docstring)."""

    @functools.wraps(main)
    def run(argv: Sequence[str] | None = None) -> R:
        args = list(sys.argv[1:] if argv is None else argv)
        debug = _debug_requested(args)
        try:
            return main([a for a in args if a != "--debug"])
        except Exception as err:
            if debug or not is_user_error(err):
                raise
            _exit_user_error(err)

    return run
