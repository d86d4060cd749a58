"""Prompt files: the text of the user turn, with named slots, turned into the chat messages every backend sends.

A prompt file is UTF-8 text. Lines starting with ``#`` are comments. Slots are written ``{name}``:

* ``{image}`` (generation prompts): where the page image goes in the user turn; exactly once, the text before and
  after it become text parts around the image;
* ``{num_queries}`` (generation prompts): replaced by the number of queries asked for;
* ``{query}`` (judge prompts): replaced by the query to classify.

Other braces (a JSON example, say) are left alone. Messages use the OpenAI chat format, the image as an
``image_url`` part holding a data URL: the OpenAI-compatible servers and ``vllm.LLM.chat`` take them as they
are, and the transformers backend renders them with the checkpoint's chat template.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_prep.errors import InputError, read_text_input

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"
DEFAULT_QUERIES_PROMPT = PROMPT_DIR / "queries.txt"
DEFAULT_JUDGE_PROMPT = PROMPT_DIR / "judge.txt"
IMAGE_SLOT = "{image}"
GENERATION_SLOTS = (IMAGE_SLOT, "{num_queries}")
JUDGE_SLOTS = ("{query}",)


@dataclass(frozen=True)
class PromptFile:
    """A validated prompt file; ``ident`` (name and content hash) goes into every record it produced."""

    path: Path
    text: str

    @classmethod
    def load(cls, path: str | Path, slots: tuple[str, ...]) -> PromptFile:
        """Read ``path``, drop comment lines, check that every slot of ``slots`` is present (image: once, and only
        in prompts that take an image); a bad file raises ``InputError`` naming it and the fix."""
        path = Path(path)
        lines = read_text_input(path, "prompt file").splitlines()
        text = "\n".join(line for line in lines if not line.startswith("#")).strip()
        missing = [slot for slot in slots if slot not in text]
        if missing:
            raise InputError(f"prompt file {path}: missing slot(s) {', '.join(missing)} (required: "
                             f"{', '.join(slots)}); add them to the text (see docs/QUERIES.md, Prompts)")
        images = text.count(IMAGE_SLOT)
        if IMAGE_SLOT in slots and images != 1:
            raise InputError(f"prompt file {path}: {IMAGE_SLOT} must appear exactly once, found {images}; keep one")
        if IMAGE_SLOT not in slots and images:
            raise InputError(f"prompt file {path}: has an {IMAGE_SLOT} slot, but this prompt is sent without an image "
                             f"(its slots: {', '.join(slots)}); remove it")
        return cls(path, text)

    @property
    def ident(self) -> str:
        """``name@sha256-prefix`` of the text sent (comments excluded)."""
        return f"{self.path.name}@{hashlib.sha256(self.text.encode()).hexdigest()[:12]}"

    def fill(self, **values: Any) -> str:
        """The text with ``{name}`` slots replaced by ``values`` (the image slot stays)."""
        text = self.text
        for name, value in values.items():
            text = text.replace("{" + name + "}", str(value))
        return text

    def messages(self, image_url: str | None = None, **values: Any) -> list[dict[str, Any]]:
        """One user message: text and, where the prompt has an image slot, the image at that place."""
        text = self.fill(**values)
        if IMAGE_SLOT not in text:
            return [{"role": "user", "content": text}]
        if image_url is None:
            raise ValueError(f"prompt file {self.path} has an image slot but no image was given")
        before, after = (part.strip() for part in text.split(IMAGE_SLOT))
        content: list[dict[str, Any]] = [{"type": "text", "text": before}] if before else []
        content.append({"type": "image_url", "image_url": {"url": image_url}})
        if after:
            content.append({"type": "text", "text": after})
        return [{"role": "user", "content": content}]
