"""Model inputs for ``generate`` from chat messages and a page image, for the checkpoint families of
``retriever.model.backbones``.

The prompt text is the checkpoint's own chat template applied to the messages (so system prompts and turn markup
are the model's). The template renders the image as one placeholder; it is then expanded into the model's image
tokens exactly as the family's processor class does, with the checkpoint's image processor, reusing the
retriever's backbone adapters (token counts, tile layouts, batch collation). Doing the expansion here, rather than
through ``AutoProcessor``, keeps generation working where the processor classes cannot be built (several
insist on a video processor, which needs torchvision).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from data_prep.errors import InputError
from retriever.model.backbones import Backbone, Example, backbone_for_model_type

Expansion = tuple[tuple[str, ...], str, dict[str, torch.Tensor]]


def _qwen(adapter: Any, image: Image.Image) -> Expansion:
    pixels = adapter.image_processor(images=[image], return_tensors="pt")
    grid = pixels["image_grid_thw"]
    tokens = "<|image_pad|>" * (int(grid.prod()) // adapter.merge**2)
    return ("<|image_pad|>",), tokens, {"pixel_values": pixels["pixel_values"], "image_grid_thw": grid}


def _internvl(adapter: Any, image: Image.Image) -> Expansion:
    pixels = adapter.image_processor(images=[image], return_tensors="pt")
    tiles = int(pixels["num_patches"][0])
    tokens = f"<img>{'<IMG_CONTEXT>' * (tiles * adapter.tokens_per_tile)}</img>"
    return ("<IMG_CONTEXT>", "<image>"), tokens, {"pixel_values": pixels["pixel_values"]}


def _idefics3(adapter: Any, image: Image.Image) -> Expansion:
    pixels = adapter.image_processor(images=[[image]], return_tensors="pt", return_row_col_info=True)
    tokens = adapter.image_string(int(pixels["rows"][0][0]), int(pixels["cols"][0][0]))
    return ("<image>",), tokens, {"pixel_values": pixels["pixel_values"],
                                  "pixel_attention_mask": pixels["pixel_attention_mask"].bool()}


def _paligemma(adapter: Any, image: Image.Image) -> Expansion:
    pixels = adapter.image_processor(images=[image], return_tensors="pt")
    tokens = adapter.image_token * adapter.image_seq_len + adapter.tokenizer.bos_token
    return (adapter.image_token,), tokens, {"pixel_values": pixels["pixel_values"]}


EXPANSIONS: dict[str, Callable[[Any, Image.Image], Expansion]] = {
    "qwen2_vl": _qwen, "qwen2_5_vl": _qwen, "internvl": _internvl, "idefics3": _idefics3, "paligemma": _paligemma}


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
        if config.model_type not in EXPANSIONS:
            raise InputError(f"{model_name}: model_type {config.model_type!r} has no input builder; "
                             f"supported: {', '.join(sorted(EXPANSIONS))} (or serve it with --backend vllm/openai)")
        if not getattr(tokenizer, "chat_template", None):
            raise InputError(f"{model_name}: the checkpoint has no chat template (chat_template.jinja or "
                             "tokenizer_config.json 'chat_template'); generation needs one: use the instruct/chat "
                             "variant of the model, or add its template")
        self.model_name = model_name
        self.adapter: Backbone = backbone_for_model_type(config.model_type)(tokenizer, image_processor, config)
        self.expand = EXPANSIONS[config.model_type]

    def prompt(self, messages: Sequence[dict[str, Any]]) -> str:
        """The chat template applied to ``messages``, ending with the assistant turn's opening."""
        return self.adapter.tokenizer.apply_chat_template(template_messages(messages), tokenize=False,
                                                          add_generation_prompt=True)

    def example(self, messages: Sequence[dict[str, Any]], image: Image.Image | None) -> Example:
        """Token ids (image placeholder expanded) and image tensors of one request."""
        text = self.prompt(messages)
        if image is None:
            return Example(self.adapter.text_ids(text), {})
        placeholders, tokens, tensors = self.expand(self.adapter, image)
        found = [p for p in placeholders if text.count(p) == 1]
        if not found:
            raise ValueError(f"{self.model_name}: its chat template must render the image as exactly one "
                             f"{' or '.join(placeholders)}; it rendered: {text[:200]!r}")
        return Example(self.adapter.text_ids(text.replace(found[0], tokens)), tensors)

    def bind(self, model: torch.nn.Module) -> None:
        """Records which inputs the loaded model's forward takes (they differ across transformers releases)."""
        self.adapter.bind(model)

    def batch(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Left-padded batch (generation appends on the right) with the images concatenated.

        Qwen-VL models of newer transformers releases also take ``mm_token_type_ids`` (1 on image tokens), which
        their processor returns; it is added when the bound model's forward accepts it.
        """
        batch = self.adapter.collate(examples, padding_side="left")
        if "image_grid_thw" in batch and "mm_token_type_ids" in self.adapter.forward_parameters:
            batch["mm_token_type_ids"] = (batch["input_ids"] == self.adapter.model_config.image_token_id).int()
        return batch
