"""Registry of backbone adapters, by name and by ``config.model_type``.

Add a family by writing a ``Backbone`` subclass in its own module and listing it in ``_ADAPTERS``; its
``chat_placeholders`` make it a chat generation family too.
"""
from __future__ import annotations

from .base import Backbone, Example
from .gemma3 import Gemma3
from .idefics3 import Idefics3
from .internvl import InternVL
from .minicpm_v import MiniCPMV
from .minicpm_v4 import MiniCPMV46, MiniCPMV47
from .modernvbert import ModernVBert
from .paligemma import PaliGemma
from .qwen_vl import Qwen25VL, Qwen35, Qwen3VL, QwenVL

_ADAPTERS: tuple[type[Backbone], ...] = (QwenVL, Qwen25VL, Qwen3VL, Qwen35, InternVL, Idefics3, PaliGemma, Gemma3,
                                         ModernVBert, MiniCPMV46, MiniCPMV47, MiniCPMV)
REGISTRY: dict[str, type[Backbone]] = {cls.name: cls for cls in _ADAPTERS}


def get_backbone(name: str) -> type[Backbone]:
    """The adapter class registered as ``name``; unknown names list the supported ones."""
    if name not in REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; supported: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def backbone_for_model_type(model_type: str) -> type[Backbone]:
    """The adapter whose family has ``config.model_type == model_type``."""
    for cls in _ADAPTERS:
        if model_type in cls.model_types:
            return cls
    raise ValueError(f"no backbone adapter for model_type {model_type!r}; supported backbones: "
                     f"{', '.join(sorted(REGISTRY))}")


def chat_model_types() -> list[str]:
    """The ``model_type``s whose adapter builds chat generation inputs (``Backbone.chat_image``), sorted."""
    return sorted(t for cls in _ADAPTERS if cls.chat_placeholders for t in cls.model_types)


__all__ = ["Backbone", "Example", "REGISTRY", "backbone_for_model_type", "chat_model_types", "get_backbone"]
