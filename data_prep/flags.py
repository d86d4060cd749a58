"""Argparse ``type=`` validators for numeric flags, shared by every command of the project.

A flag whose value is out of range (``--workers 0``, ``--page_timeout 0``, ``--max_retries -1``) is refused by
argparse itself, with its usage line and exit status 2 (docs/ERRORS.md), before anything runs::

    from data_prep.flags import positive_int, positive_float

    ap.add_argument("--workers", type=positive_int, default=1)
    ap.add_argument("--page_timeout", type=positive_float, default=120.0)
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["fraction", "non_negative_float", "non_negative_int", "positive_float", "positive_int"]


def _number(text: str, kind: type, what: str, ok: Callable[[float], bool]) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value) or not ok(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (counts of workers, pages per shard, batch sizes)."""
    return _number(text, int, "a positive integer", lambda v: v >= 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (retries, an index)."""
    return _number(text, int, "an integer >= 0", lambda v: v >= 0)


def positive_float(text: str) -> float:
    """A finite number > 0 (timeouts, resolutions)."""
    return _number(text, float, "a number > 0", lambda v: v > 0)


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (a temperature)."""
    return _number(text, float, "a number >= 0", lambda v: v >= 0)


def fraction(text: str) -> float:
    """A number in [0, 1] (a share of the data)."""
    return _number(text, float, "a number in [0, 1]", lambda v: 0 <= v <= 1)
