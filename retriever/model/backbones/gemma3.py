"""Gemma3 (SigLIP + Gemma3 LM) adapter.

Inputs (``native``) follow Gemma3's processor and chat template: queries ``{bos}<start_of_turn>user\\n{text}
<end_of_turn>\\n``, pages the same turn with the image first, where the image is the processor's full image
sequence ``\\n\\n<start_of_image>`` + ``<image_soft_token>`` x ``mm_tokens_per_image`` + ``<end_of_image>\\n\\n``
(the chat template renders an image as ``<start_of_image>``, which the processor, and ``chat_image`` here, replace by
that sequence). ``token_type_ids`` are 1 on the soft tokens: Gemma3 attends bidirectionally within an image
(what the processor's ``mm_token_type_ids`` give the model); positions are counted over attended tokens, so that
left padding does not shift them. ``pixel_values`` is [images, 3, H, W], one row per page (no pan-and-scan crops).
``colpali_engine``: ColGemma3's processor (the same turns through the checkpoint's chat template, tokenized with the
tokenizer's own BOS as well).

Vision tower (``vision_module``, shared with PaliGemma through :class:`~.paligemma.SiglipGemma`):
``model.model.vision_tower`` (SigLIP); the ``multi_modal_projector`` (average pooling to ``mm_tokens_per_image``,
norm, projection) stays trainable when the tower is frozen.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from .base import Example, InputFormat, position_ids_from_mask
from .paligemma import SiglipGemma

GEMMA3_TURN = "{bos}<start_of_turn>user\n{image}{text}<end_of_turn>\n"
GEMMA3_FORMATS = {
    "native": InputFormat(query=GEMMA3_TURN.replace("{image}", ""), page=GEMMA3_TURN),
    # colpali-engine's ColGemma3: the chat template's turn, tokenized with the tokenizer's own BOS (so two).
    "colpali_engine": InputFormat(query=GEMMA3_TURN.replace("{image}", ""), page=GEMMA3_TURN, special_tokens=True),
}


class Gemma3(SiglipGemma):
    name = "gemma3"
    model_types = ("gemma3",)
    input_formats = GEMMA3_FORMATS
    chat_placeholders = ("<start_of_image>",)

    def image_inputs(self, image: Image.Image) -> tuple[str, dict[str, torch.Tensor]]:
        pixels = self.image_processor(images=[image], return_tensors="pt", do_pan_and_scan=False)
        tokenizer = self.tokenizer
        soft = tokenizer.convert_ids_to_tokens(self.model_config.image_token_id)
        sequence = f"\n\n{tokenizer.boi_token}{soft * self.model_config.mm_tokens_per_image}{tokenizer.eoi_token}\n\n"
        return sequence, {"pixel_values": pixels["pixel_values"]}

    def model_inputs(self, batch: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, Any]:
        inputs = super().model_inputs(batch, dtype)
        inputs["position_ids"] = position_ids_from_mask(batch["attention_mask"])
        inputs["token_type_ids"] = self.token_types(batch)
        return inputs

    def chat_batch(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        batch = super().chat_batch(examples)
        batch["token_type_ids"] = self.token_types(batch)  # what Gemma3's processor returns for generate
        return batch

    def token_types(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """1 on image soft tokens (attended bidirectionally within their image), else 0."""
        return (batch["input_ids"] == self.model_config.image_token_id).long()
