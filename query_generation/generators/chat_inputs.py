"""Model inputs for ``generate`` from chat messages and a page image, for the checkpoint families of
``retriever.model.backbones``.

The prompt text is the checkpoint's own chat template applied to the messages (so system prompts and turn markup
are the model's). The template renders the image as one placeholder, which is replaced by the family's image
tokens: the backbone adapter's ``chat_image`` gives the placeholder(s), the expanded image-token string and the
image tensors, the same expansion its retrieval inputs use (as the family's processor class does, with the
checkpoint's image processor); ``chat_batch`` collates. Doing the expansion there, rather than through
``AutoProcessor``, keeps generation working where the processor classes cannot be built (several insist on a
video processor, which needs torchvision).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from data_prep.errors import InputError
from retriever.model.backbones import Backbone, Example, backbone_for_model_type, chat_model_types


def template_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat messages with image parts as ``{"type": "image"}``, the form chat templates expect."""
    out = []
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            content = [{"type": "image"} if part["type"] == "image_url" else part for part in content]
        out.append({**message, "content": content})
    return out


class ChatInputs:
    """Turns ``(messages, image or None)`` into padded ``generate`` inputs for one checkpoint."""

    def __init__(self, model_name: str, tokenizer: Any, image_processor: Any, config: Any) -> None:
        supported = chat_model_types()
        if config.model_type not in supported:
            raise InputError(f"{model_name}: model_type {config.model_type!r} has no input builder; "
                             f"supported: {', '.join(supported)} (or serve it with --backend vllm/openai)")
        if not getattr(tokenizer, "chat_template", None):
            raise InputError(f"{model_name}: the checkpoint has no chat template (chat_template.jinja or "
                             "tokenizer_config.json 'chat_template'); generation needs one: use the instruct/chat "
                             "variant of the model, or add its template")
        self.model_name = model_name
        self.adapter: Backbone = backbone_for_model_type(config.model_type)(tokenizer, image_processor, config)

    def prompt(self, messages: Sequence[dict[str, Any]]) -> str:
        """The chat template applied to ``messages``, ending with the assistant turn's opening."""
        return self.adapter.tokenizer.apply_chat_template(template_messages(messages), tokenize=False,
                                                          add_generation_prompt=True)

    def example(self, messages: Sequence[dict[str, Any]], image: Image.Image | None) -> Example:
        """Token ids (image placeholder expanded) and image tensors of one request."""
        text = self.prompt(messages)
        if image is None:
            return Example(self.adapter.text_ids(text), {})
        chat = self.adapter.chat_image(image)
        found = [p for p in chat.placeholders if text.count(p) == 1]
        if not found:
            raise ValueError(f"{self.model_name}: its chat template must render the image as exactly one "
                             f"{' or '.join(chat.placeholders)}; it rendered: {text[:200]!r}")
        return Example(self.adapter.text_ids(text.replace(found[0], chat.tokens)), chat.tensors)

    def bind(self, model: torch.nn.Module) -> None:
        """Records which inputs the loaded model's forward takes (they differ across transformers releases)."""
        self.adapter.bind(model)

    def batch(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """The ``generate`` batch of ``examples`` (left-padded, images concatenated, family extras added)."""
        return self.adapter.chat_batch(examples)
