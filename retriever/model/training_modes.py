"""Which parameters train: ``full``, ``lora`` or ``head``, optionally with a frozen vision tower.

- ``full``: every backbone parameter trains, except an untied LM head (retrieval never runs it, and a
  trainable parameter without gradient breaks DDP's reducer).
- ``lora``: the backbone is frozen and wrapped by peft; LoRA adapters go on the language model's attention
  and MLP projections (each backbone's ``lora_language`` preset), and on the vision tower's too when
  ``LoraSettings.include_vision``.  Heads always train (they live outside the peft model).
- ``head``: only the retrieval heads train.
- ``freeze_vision``: the vision tower (``Backbone.vision_module``) is frozen in any mode; its LoRA preset
  is then never applied.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from peft import LoraConfig, get_peft_model

from .backbones import Backbone

TrainingMode = Literal["full", "lora", "head"]
TRAINING_MODES: tuple[str, ...] = ("full", "lora", "head")


@dataclass
class LoraSettings:
    """LoRA hyper-parameters; ``target_modules`` (a regex) overrides the backbone preset."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    include_vision: bool = False
    target_modules: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def lora_target_regex(backbone: Backbone, settings: LoraSettings, freeze_vision: bool) -> str:
    """The peft ``target_modules`` regex: the language preset, plus the vision preset when asked."""
    if settings.target_modules:
        return settings.target_modules
    if settings.include_vision and not freeze_vision:
        return f"(?:{backbone.lora_language})|(?:{backbone.lora_vision})"
    return backbone.lora_language


def freeze_unused_lm_head(model: torch.nn.Module) -> None:
    """Freezes the output embedding unless it is tied to the input embedding."""
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.get_input_embeddings().weight:
        head.weight.requires_grad_(False)


def apply_training_mode(model: torch.nn.Module, backbone: Backbone, mode: str, lora: LoraSettings | None = None,
                        freeze_vision: bool = False) -> torch.nn.Module:
    """Sets ``requires_grad`` on ``model`` for ``mode``; returns the model (peft-wrapped for ``lora``)."""
    if mode not in TRAINING_MODES:
        raise ValueError(f"unknown training mode {mode!r}; supported: {', '.join(TRAINING_MODES)}")
    if mode == "lora":
        settings = lora or LoraSettings()
        config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                            target_modules=lora_target_regex(backbone, settings, freeze_vision), bias="none")
        model = get_peft_model(model, config)  # freezes everything but the adapters
    else:
        model.requires_grad_(mode == "full")
        freeze_unused_lm_head(model)
    if freeze_vision:
        backbone.vision_module(unwrap(model)).requires_grad_(False)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (the model itself otherwise)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def count_trainable(module: torch.nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (shared tensors counted once)."""
    seen = {id(p): p for p in module.parameters() if p.requires_grad}
    return sum(p.numel() for p in seen.values())
