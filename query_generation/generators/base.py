"""The interface every generation backend implements, and what it is given.

A backend turns a batch of :class:`Request` (chat messages, the page image, a per-request seed) into one
:class:`Reply` per request: the ``n`` sampled answers, or an error that concerns that request only (the caller
records the page as failed). Errors that concern the whole run (model cannot load, server unreachable) are
raised, so the run stops with everything written so far kept.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

# the flag that lets the transformers and vllm backends run code shipped with a checkpoint, as errors name it
REMOTE_CODE_FLAG = "--trust_remote_code (--judge_trust_remote_code for the filter's judge)"


@dataclass(frozen=True)
class Request:
    """One chat to complete: ``key`` (page id or query line) names it in errors."""

    key: str
    messages: list[dict[str, Any]]
    image: Image.Image | None
    seed: int


@dataclass(frozen=True)
class Decoding:
    """Decoding settings shared by all backends; ``json_schema`` asks for structured output where supported."""

    max_new_tokens: int
    temperature: float = 0.0
    samples: int = 1
    json_schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class Reply:
    texts: list[str] = field(default_factory=list)
    error: str | None = None


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how many were left out."""
    return text if len(text) <= limit else f"{text[:limit]}... [{len(text) - limit} more characters]"


class QueryGenerator(ABC):
    """A chat model behind one call: ``generate(requests, decoding) -> replies`` (same order)."""

    name: str

    def __init__(self, model: str) -> None:
        self.model = model

    @abstractmethod
    def generate(self, requests: Sequence[Request], decoding: Decoding) -> list[Reply]: ...

    def close(self) -> None:
        """Release the model or connections (default: nothing to release)."""
