"""Optimizer parameter groups (weight decay, layer-wise learning-rate decay), schedules and drop path.

Layer-wise lr decay: each stack of numbered blocks (``...layers.<i>.``, ``...blocks.<i>.``, ``...layer.<i>.``) is
found from the parameter names; block ``i`` of a stack with ``n`` blocks gets ``lr * decay ** (n - i)``, the
embeddings (parameters named ``embed``/``patch``/``position`` outside the blocks) ``lr * decay ** (n + 1)`` of the
deepest stack, and everything after the blocks (final norms, projection heads, the loss's temperature) ``lr``.
With ``decay == 1`` there is a single group pair (decay / no decay).
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Iterable

import torch
from torch import nn

_BLOCK = re.compile(r"^(?P<stack>.*?\.(?:layers|blocks|layer|h))\.(?P<index>\d+)\.")
_EMBEDDING = re.compile(r"(embed|patch|position|wte|wpe)")


def parameter_groups(named: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float,
                     layer_decay: float = 1.0) -> list[dict]:
    """AdamW parameter groups: biases and norms without weight decay; optional layer-wise lr decay."""
    named = [(name, p) for name, p in named if p.requires_grad]
    depth = _stack_depths(name for name, _ in named)
    deepest = max(depth.values(), default=0)
    groups: dict[tuple[float, float], list[nn.Parameter]] = defaultdict(list)
    for name, param in named:
        scale = layer_decay ** _decay_exponent(name, depth, deepest) if layer_decay != 1.0 else 1.0
        decay = 0.0 if param.ndim < 2 or "norm" in name.lower() else weight_decay
        groups[(lr * scale, decay)].append(param)
    return [{"params": params, "lr": group_lr, "weight_decay": decay}
            for (group_lr, decay), params in sorted(groups.items(), key=lambda item: -item[0][0])]


def _stack_depths(names: Iterable[str]) -> dict[str, int]:
    depth: dict[str, int] = {}
    for name in names:
        match = _BLOCK.match(name)
        if match:
            depth[match["stack"]] = max(depth.get(match["stack"], 0), int(match["index"]) + 1)
    return depth


def _decay_exponent(name: str, depth: dict[str, int], deepest: int) -> int:
    match = _BLOCK.match(name)
    if match:
        return depth[match["stack"]] - int(match["index"])
    if _EMBEDDING.search(name):
        return deepest + 1
    return 0


def set_drop_path(model: nn.Module, rate: float) -> int:
    """Stochastic depth: set drop rates rising linearly to ``rate`` over the modules that have ``drop_prob``.

    Returns how many modules were found (0 means the backbone has no drop-path modules, e.g. Qwen2-VL)."""
    modules = [m for m in model.modules() if hasattr(m, "drop_prob")]
    for i, module in enumerate(modules):
        module.drop_prob = rate * i / max(1, len(modules) - 1)
    return len(modules)


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, warmup_steps: int, total_steps: int):
    """An lr schedule from transformers' registry (linear, cosine, constant_with_warmup, ...)."""
    from transformers import get_scheduler

    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
