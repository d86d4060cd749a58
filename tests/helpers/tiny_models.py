"""The tiny architectures every per-family test runs over, as pytest parameters that skip (with the reason) where
the installed transformers cannot build one."""
from __future__ import annotations

import pytest

from retriever.model.tiny_checkpoints import unavailable_reason

ARCHS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "internvl", "idefics3", "paligemma", "gemma3", "modernvbert",
         "minicpmv4_6", "minicpmv4_7")
# The families that generate text (query generation's chat inputs); ModernVBERT is an encoder.
GENERATIVE = tuple(arch for arch in ARCHS if arch != "modernvbert")


def _params(archs: tuple[str, ...]) -> list:
    return [pytest.param(arch, marks=pytest.mark.skipif(reason is not None, reason=str(reason)))
            for arch, reason in ((a, unavailable_reason(a)) for a in archs)]


ARCH_PARAMS = _params(ARCHS)
GENERATIVE_PARAMS = _params(GENERATIVE)
