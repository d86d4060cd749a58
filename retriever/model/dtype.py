"""The weight dtype flag, spelled the same by every tool: ``--dtype {auto,float32,bfloat16,float16,float64}``.

The names are torch's (and transformers 5's ``dtype=`` argument); ``auto`` keeps the checkpoint's own dtype.
Two older spellings still work and print a deprecation warning: the trainer's ``--torch_dtype`` flag, and the
short values ``fp32``, ``bf16``, ``fp16``.
"""
from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["AUTO", "DTYPES", "add_dtype_argument", "config_dtype", "default_dtype", "dtype_name", "torch_dtype"]

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                                  "float64": torch.float64}
AUTO = "auto"
_OLD_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp64": "float64"}


def dtype_name(text: str) -> str:
    """The canonical name of a dtype flag value (argparse ``type``); the short old names warn."""
    if text in _OLD_NAMES:
        warnings.warn(f"dtype {text} is deprecated; use {_OLD_NAMES[text]}", FutureWarning, stacklevel=2)
        return _OLD_NAMES[text]
    if text != AUTO and text not in DTYPES:
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r}; choose from {AUTO}, {', '.join(DTYPES)}")
    return text


def torch_dtype(name: str | torch.dtype | None) -> torch.dtype | str | None:
    """What ``from_pretrained(dtype=...)`` takes: a torch dtype for a name, ``"auto"`` and None unchanged."""
    return DTYPES.get(name, name) if isinstance(name, str) else name


def config_dtype(name: str | torch.dtype | None, *configs: Any) -> torch.dtype | None:
    """:func:`torch_dtype` for ``from_config``, which takes no ``"auto"``: there, the dtype the first of ``configs``
    recording one names (None, torch's default, when none does)."""
    if name != AUTO:
        return torch_dtype(name)
    for config in configs:
        recorded = getattr(config, "dtype", None)
        if isinstance(recorded, torch.dtype) or recorded in DTYPES:
            return DTYPES.get(recorded, recorded)
    return None


def default_dtype() -> str:
    """bfloat16 where CUDA is available, float32 on the CPU (the evaluators' default)."""
    return "bfloat16" if torch.cuda.is_available() else "float32"


class _DeprecatedFlag(argparse.Action):
    """Stores like the flag it aliases, with a deprecation warning naming the new flag."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        warnings.warn(f"{option_string} is deprecated; use --{self.dest}", FutureWarning, stacklevel=2)
        setattr(namespace, self.dest, values)


def add_dtype_argument(parser: argparse.ArgumentParser | Any, default: str | None, help: str,
                       aliases: Sequence[str] = (), flag: str = "--dtype") -> None:
    """Add ``flag`` (``--dtype``, or a prefixed one such as ``--judge_dtype``) and deprecated alias flags such as
    ``--torch_dtype`` to a parser or argument group."""
    dest = flag.lstrip("-")
    parser.add_argument(flag, type=dtype_name, default=default, metavar="{" + ",".join([AUTO, *DTYPES]) + "}",
                        help=help)
    for alias in aliases:
        parser.add_argument(alias, dest=dest, type=dtype_name, action=_DeprecatedFlag, metavar="DTYPE",
                            help=f"deprecated alias of {flag}")
