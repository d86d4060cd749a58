"""The optimizer (``--optim``), its parameter groups (weight decay, layer-wise lr decay), schedules and drop path.

``--optim``: ``adamw`` (torch), ``adamw_fused`` (torch's fused kernel: one launch for all parameters),
``adamw_8bit`` and ``paged_adamw_8bit`` (bitsandbytes; 8-bit optimizer states, the paged one spills them to CPU
memory under pressure and needs CUDA). Under DeepSpeed the optimizer is handed to the engine as a client
optimizer; 8-bit states work with ZeRO-1/2 (DeepSpeed steps the client optimizer on flat fp32 partitions) but
not with ZeRO-3 or optimizer offload, which need their own optimizer: ``check_optimizer`` says so before anything
is loaded.

Layer-wise lr decay: each stack of numbered blocks (``...layers.<i>.``, ``...blocks.<i>.``, ``...layer.<i>.``) is
found from the parameter names; block ``i`` of a stack with ``n`` blocks gets ``lr * decay ** (n - i)``, the
embeddings (parameters named ``embed``/``patch``/``position`` outside the blocks) ``lr * decay ** (n + 1)`` of the
deepest stack, and everything after the blocks (final norms, projection heads, the loss's temperature) ``lr``.
With ``decay == 1`` there is a single group pair (decay / no decay).
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Callable, Iterable

import torch
from torch import nn

from data_prep.errors import InputError

_BLOCK = re.compile(r"^(?P<stack>.*?\.(?:layers|blocks|layer|h))\.(?P<index>\d+)\.")
_EMBEDDING = re.compile(r"(embed|patch|position|wte|wpe)")


OPTIMIZERS = ("adamw", "adamw_fused", "adamw_8bit", "paged_adamw_8bit")
_BITSANDBYTES = {"adamw_8bit": "AdamW8bit", "paged_adamw_8bit": "PagedAdamW8bit"}


def check_optimizer(name: str, deepspeed_config: dict[str, Any] | None, cuda: bool) -> None:
    """Raise ``InputError`` (a user error) when ``--optim name`` cannot run here (missing package or device, or
    no DeepSpeed support)."""
    if name not in OPTIMIZERS:
        raise InputError(f"--optim {name}: unknown optimizer (choose from {', '.join(OPTIMIZERS)})")
    if deepspeed_config and "optimizer" in deepspeed_config and name != "adamw":
        raise InputError(f"--optim {name} contradicts the DeepSpeed config's own 'optimizer' section; drop one")
    if name not in _BITSANDBYTES:
        return
    zero = (deepspeed_config or {}).get("zero_optimization", {})
    if int(zero.get("stage", 0)) == 3:
        raise InputError(f"--optim {name}: DeepSpeed ZeRO-3 partitions parameters and steps its own optimizer, which "
                         "does not support 8-bit optimizer states; use ZeRO-1/2 or --optim adamw")
    if zero.get("offload_optimizer", {}).get("device", "none") != "none":
        raise InputError(f"--optim {name}: DeepSpeed optimizer offload needs DeepSpeed's CPU Adam, not 8-bit states; "
                         "remove offload_optimizer or use --optim adamw")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise InputError(f"--optim {name} needs bitsandbytes, which is not installed "
                         "(pip install bitsandbytes)") from None
    if name == "paged_adamw_8bit" and not cuda:
        raise InputError("--optim paged_adamw_8bit pages optimizer states through CUDA unified memory; it needs a GPU")


def optimizer_factory(name: str, lr: float, weight_decay: float) -> Callable[[list[dict]], torch.optim.Optimizer]:
    """A function from parameter groups to the ``--optim`` optimizer (``check_optimizer`` first)."""
    def build(groups: list[dict]) -> torch.optim.Optimizer:
        if name in _BITSANDBYTES:
            import bitsandbytes as bnb

            return getattr(bnb.optim, _BITSANDBYTES[name])(groups, lr=lr, weight_decay=weight_decay)
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=name == "adamw_fused" or None)

    return build


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
