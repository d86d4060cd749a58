"""``--compile``: ``torch.compile`` of an encoder's heads (``heads``) and of its backbone's model too (``all``).

Each module's ``forward`` is replaced by its compiled version (``dynamic=True``: page and query lengths vary), so
parameters, state dicts and saving are unchanged. Compilation happens at the first call; when it fails (no C++
compiler for Inductor, an operation Dynamo cannot trace) that module runs eagerly from then on, after one warning
naming it and the reason. Outputs equal the eager ones up to float rounding (the tests check 1e-5 on float32).
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from .training_modes import unwrap

__all__ = ["COMPILE_CHOICES", "compile_encoder", "compile_forward"]

logger = logging.getLogger(__name__)
COMPILE_CHOICES = ("none", "heads", "all")


def compile_forward(module: nn.Module, name: str, backend: str = "inductor") -> None:
    """Replace ``module.forward`` by its compiled version, falling back to eager (one warning) if compiling fails."""
    eager = module.forward
    compiled = torch.compile(eager, dynamic=True, backend=backend)

    def forward(*args: Any, **kwargs: Any) -> Any:
        try:
            return compiled(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any compile failure; an eager error is raised again below
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            logger.warning("--compile: %s runs eagerly: torch.compile failed (%s)", name, reason)
            module.forward = eager
            return eager(*args, **kwargs)

    module.forward = forward


def compile_encoder(encoder: Any, what: str, backend: str = "inductor") -> None:
    """``what``: ``none``, ``heads`` or ``all`` (the heads and the backbone's ``*Model``)."""
    if what == "none":
        return
    compile_forward(encoder.head, "the head", backend)
    if what == "all":
        compile_forward(encoder.backbone.base_model(unwrap(encoder.model)), "the backbone", backend)
