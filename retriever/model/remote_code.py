"""Code shipped with a checkpoint (``auto_map`` in its config files) runs only when the user asked for it.

Every ``Auto*.from_pretrained`` of the project (and the vLLM engine) gets ``trust_remote_code`` explicitly:
``False`` unless the command was given ``--trust_remote_code`` (``--judge_trust_remote_code`` for the filter's
judge). Left unset, transformers asks on stdin whether to run the code, so ``echo y | <command>`` ran it. With
``False`` it refuses with a plain ``ValueError``; :func:`remote_code_refused` turns that refusal into an
:class:`InputError` naming the checkpoint and the flag (one ``error:`` line, exit status 2).
"""
from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from data_prep.errors import InputError, UserError

__all__ = ["refuses_remote_code", "remote_code_refused"]

R = TypeVar("R")
# what every refusal of transformers (config, model, tokenizer, processor classes) asks the caller to pass
_REFUSAL = "trust_remote_code=True"


@contextlib.contextmanager
def remote_code_refused(path: str | os.PathLike, flag: str = "--trust_remote_code") -> Iterator[None]:
    """Re-raise transformers' refusal to run ``path``'s own code, inside the block, as an :class:`InputError`."""
    try:
        yield
    except UserError:
        raise
    except ValueError as err:
        if _REFUSAL not in str(err):
            raise
        raise InputError(f"{path}: loading this checkpoint needs Python code shipped with it (auto_map in its "
                         f"config files), which runs only with {flag}: pass it if you trust that code") from err


def refuses_remote_code(load: Callable[..., R]) -> Callable[..., R]:
    """Decorator of a loader whose first argument is the checkpoint: :func:`remote_code_refused` around it."""

    @functools.wraps(load)
    def run(path: str | os.PathLike, *args: Any, **kwargs: Any) -> R:
        with remote_code_refused(path):
            return load(path, *args, **kwargs)

    return run
