"""The hyperparameter search space of ``python -m retriever.search``: which ``retriever.train`` flags a trial draws, and
from what.

A space is a mapping from a ``retriever.train`` flag name (without ``--``) to its distribution:
``{type: float, low, high, log}``, ``{type: int, low, high, step, log}`` or ``{type: categorical, choices: [...]}``;
a JSON or YAML file (``--space FILE``), or :data:`DEFAULT_SPACE`. Each trial's values become ``--flag value``
arguments after the search's fixed training flags (a list value, e.g. Matryoshka weights, is written comma-joined).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from data_prep.errors import InputError

__all__ = ["DEFAULT_SPACE", "Param", "load_space", "space_flags", "suggest"]

# What a search over a fine-tuning run varies first (the ranges of the ColPali / DSE recipes, around our defaults).
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    "temperature": {"type": "float", "low": 0.01, "high": 0.1, "log": True},
    "warmup_steps": {"type": "int", "low": 0, "high": 100},
    "lora_r": {"type": "categorical", "choices": [8, 16, 32, 64]},
    "num_negatives": {"type": "int", "low": 0, "high": 4},
}


@dataclass(frozen=True)
class Param:
    """One flag and its distribution."""

    flag: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = None
    choices: tuple[Any, ...] = ()


def load_space(path: Path | None) -> list[Param]:
    """The parameters of ``path`` (JSON or YAML), or of :data:`DEFAULT_SPACE` without one."""
    if path is None:
        return _parse(DEFAULT_SPACE, "the default space")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise InputError(f"--space {path}: cannot read it ({str(err).splitlines()[0]})") from err
    return _parse(data, f"--space {path}")


def _parse(data: Any, where: str) -> list[Param]:
    if not isinstance(data, dict) or not data:
        raise InputError(f"{where}: empty; give a mapping of retriever.train flags to distributions")
    return [_param(flag.lstrip("-"), spec, where) for flag, spec in data.items()]


def _param(flag: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, dict) or spec.get("type") not in ("float", "int", "categorical"):
        raise InputError(f"{where}: {flag}: give {{type: float|int|categorical, ...}}, got {spec!r}")
    kind = spec["type"]
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise InputError(f"{where}: {flag}: a categorical needs a non-empty list of choices")
        return Param(flag, kind, choices=tuple(choices))
    low, high, log = spec.get("low"), spec.get("high"), bool(spec.get("log", False))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise InputError(f"{where}: {flag}: low and high must be numbers, got {low!r} and {high!r}")
    if low > high or (log and low <= 0):
        raise InputError(f"{where}: {flag}: empty range: low {low} > high {high}" if low > high else
                         f"{where}: {flag}: a log range needs low > 0, got {low}")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise InputError(f"{where}: {flag}: an int range needs integer bounds, got {low} and {high}")
    step = spec.get("step")
    return Param(flag, kind, float(low) if kind == "float" else int(low), float(high) if kind == "float" else
                 int(high), log, int(step) if step else None)


def suggest(trial: Any, params: list[Param]) -> dict[str, Any]:
    """This trial's value of every parameter (an ``optuna.Trial``)."""
    values = {}
    for p in params:
        if p.kind == "categorical":
            values[p.flag] = trial.suggest_categorical(p.flag, list(p.choices))
        elif p.kind == "int":
            values[p.flag] = trial.suggest_int(p.flag, int(p.low), int(p.high), step=p.step or 1, log=p.log)
        else:
            values[p.flag] = trial.suggest_float(p.flag, p.low, p.high, log=p.log)
    return values


def space_flags(values: dict[str, Any]) -> list[str]:
    """``--flag value`` arguments of a trial's values."""
    args: list[str] = []
    for flag, value in values.items():
        args += [f"--{flag}", ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)]
    return args
