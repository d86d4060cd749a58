"""DeepSpeed configs for training: fill the ``"auto"`` fields from the trainer's flags, refuse contradictions.

The files in ``ds_configs/`` leave every value that the training flags also decide as ``"auto"``. This module
resolves them the way HF's Trainer does, with one difference that matters for GradCache: DeepSpeed's "micro batch"
is one contrastive batch of ``--per_device_train_batch_size`` queries per rank, however many GradCache chunks it is
split into; the chunks are not DeepSpeed micro-steps.

A value the user wrote explicitly must agree with the flags; otherwise training stops before it starts with an
error naming the config file, the field and both values.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_prep.errors import InputError, MissingInputError

AUTO = "auto"


@dataclass(frozen=True)
class TrainingShape:
    """The flags that a DeepSpeed config must agree with."""

    micro_batch_size: int
    gradient_accumulation_steps: int
    world_size: int
    max_grad_norm: float | None
    bf16: bool
    hidden_size: int


def load_deepspeed_config(path: str | Path) -> dict[str, Any]:
    """Read a DeepSpeed JSON config, with an error naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"DeepSpeed config {path} does not exist (--deepspeed)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"DeepSpeed config {path}: invalid JSON at line {err.lineno}: {err.msg}") from err
    if not isinstance(config, dict):
        raise InputError(f"DeepSpeed config {path}: expected a JSON object at the top level")
    return config


def resolve_deepspeed_config(config: dict[str, Any], shape: TrainingShape, source: str = "<config>") -> dict[str, Any]:
    """Return a copy of ``config`` with "auto" fields filled from ``shape``; raise on contradictions."""
    resolved = json.loads(json.dumps(config))
    batch = shape.micro_batch_size * shape.gradient_accumulation_steps * shape.world_size
    clip = shape.max_grad_norm if shape.max_grad_norm and shape.max_grad_norm > 0 else 0.0
    wanted: dict[tuple[str, ...], Any] = {
        ("train_micro_batch_size_per_gpu",): shape.micro_batch_size,
        ("gradient_accumulation_steps",): shape.gradient_accumulation_steps,
        ("train_batch_size",): batch,
        ("gradient_clipping",): clip,
        ("bf16", "enabled"): shape.bf16,
    }
    for keys, value in wanted.items():
        _settle(resolved, keys, value, source, required=keys != ("bf16", "enabled") or shape.bf16)
    if _get(resolved, ("fp16", "enabled")) is True:
        raise InputError(f"{source}: fp16 is not supported (use --bf16); set fp16.enabled to false")
    if _get(resolved, ("fp16", "enabled")) == AUTO:
        resolved["fp16"]["enabled"] = False
    _resolve_zero_buckets(resolved, shape.hidden_size)
    return resolved


def zero_stage(config: dict[str, Any] | None) -> int:
    """The ZeRO stage of a (resolved) config; 0 when there is none."""
    if not config:
        return 0
    return int(config.get("zero_optimization", {}).get("stage", 0))


def _settle(config: dict[str, Any], keys: tuple[str, ...], value: Any, source: str, required: bool) -> None:
    """Fill an "auto"/absent field with ``value``; raise if an explicit value differs from it."""
    current = _get(config, keys)
    name = ".".join(keys)
    if current is None and not required:
        return
    if current is None or current == AUTO:
        _set(config, keys, value)
        return
    if isinstance(value, bool):
        agrees = bool(current) == value
    elif isinstance(value, float):
        agrees = abs(float(current) - value) < 1e-12
    else:
        agrees = current == value
    if not agrees:
        raise InputError(
            f"{source}: {name} is {current!r} but the training flags give {value!r}; "
            f"set it to \"auto\" or change the flags to agree"
        )


def _resolve_zero_buckets(config: dict[str, Any], hidden: int) -> None:
    """ZeRO-3 bucket "auto" values, sized from the model's hidden size (as HF's integration does)."""
    zero = config.get("zero_optimization", {})
    defaults = {
        "reduce_bucket_size": hidden * hidden,
        "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
        "stage3_param_persistence_threshold": 10 * hidden,
    }
    for key, value in defaults.items():
        if zero.get(key) == AUTO:
            zero[key] = value


def _get(config: dict[str, Any], keys: tuple[str, ...]) -> Any:
    node: Any = config
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _set(config: dict[str, Any], keys: tuple[str, ...], value: Any) -> None:
    node = config
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
