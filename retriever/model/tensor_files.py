"""Loading tensor files (safetensors weights, ``torch.load`` states) with one-line errors for broken ones.

safetensors reports a file cut short (an interrupted copy or download, a full disk) as ``SafetensorError`` without
naming the file, and ``torch.load`` as ``RuntimeError`` / ``EOFError`` / ``UnpicklingError``: tracebacks. Loading
through this module turns them into :class:`CorruptFileError`, an :class:`~data_prep.errors.InputError` (one
``error:`` line, exit status 2) that names the file and says what to do. ``torch.load`` always runs with
``weights_only=True``: a file holding pickled Python objects (classes, functions) is refused with one line and none
of its code runs.

* :func:`load_safetensors`, :func:`load_torch_file`: one file;
* :func:`readable_weights`: around a library loader that reads a directory's ``*.safetensors`` files itself
  (transformers' ``from_pretrained``, peft's adapters); the error names the broken file of the directory.
"""
from __future__ import annotations

import contextlib
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from data_prep.errors import InputError

__all__ = ["RESAVE", "CorruptFileError", "load_safetensors", "load_torch_file", "readable", "readable_weights"]

RESAVE = "copy or save the checkpoint again"  # what to do about a broken weight file of a checkpoint

# how torch.load reports a file that is not a whole zip archive (truncated, empty, overwritten)
_TORCH_CORRUPT = re.compile(r"PytorchStreamReader|zip archive|corrupt", re.IGNORECASE)
_PICKLE_REFUSED = "Weights only load failed"
_REFUSED_GLOBAL = re.compile(r"WeightsUnpickler error: (.+?)(?: was not an allowed global|\.?\n|\.?$)")


class CorruptFileError(InputError):
    """A weight or state file that cannot be read: truncated, corrupt, or holding pickled objects."""


def load_safetensors(path: Path, what: str, fix: str) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``path`` (``what`` it holds; ``fix``: what to do when it is broken)."""
    with readable(path, what, fix):
        return load_file(str(path))


def load_torch_file(path: Path, what: str, fix: str) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU, a broken or pickled file being one line."""
    with readable(path, what, fix):
        return torch.load(path, map_location="cpu", weights_only=True)


@contextlib.contextmanager
def readable(path: Path, what: str, fix: str) -> Iterator[None]:
    """Re-raise a failed read of ``path`` inside the block as :class:`CorruptFileError` (see the module
    docstring); ``what`` is what the file holds, ``fix`` what the user can do."""
    try:
        yield
    except pickle.UnpicklingError as err:
        if _PICKLE_REFUSED not in str(err):
            raise _corrupt(path, what, err, fix) from err
        refused = _REFUSED_GLOBAL.search(str(err))
        raise CorruptFileError(f"{path} ({what}) holds pickled Python objects"
                               f"{f' ({refused.group(1)})' if refused else ''}, which are never loaded (torch.load "
                               f"runs with weights_only=True); {fix}") from err
    except (SafetensorError, EOFError) as err:
        raise _corrupt(path, what, err, fix) from err
    except RuntimeError as err:
        if not _TORCH_CORRUPT.search(str(err)):
            raise
        raise _corrupt(path, what, err, fix) from err


@contextlib.contextmanager
def readable_weights(directory: Path, what: str, fix: str) -> Iterator[None]:
    """:func:`readable` for a loader that reads the ``*.safetensors`` files of ``directory`` itself: the error
    names the first of them that does not open (or the directory)."""
    try:
        yield
    except SafetensorError as err:
        broken = next((p for p in sorted(Path(directory).glob("*.safetensors")) if not _opens(p)), directory)
        raise _corrupt(broken, what, err, fix) from err


def _opens(path: Path) -> bool:
    """Whether the header of the safetensors file ``path`` parses and covers the whole file."""
    try:
        with safe_open(str(path), framework="pt"):
            return True
    except SafetensorError:
        return False


def _corrupt(path: Path, what: str, err: BaseException, fix: str) -> CorruptFileError:
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". This is an internal")[0]
    return CorruptFileError(f"{path} ({what}) is truncated or corrupt ({reason}); {fix}")
