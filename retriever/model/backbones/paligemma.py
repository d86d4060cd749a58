"""PaliGemma (SigLIP + Gemma LM; the ColPali backbone) adapter.

Inputs (``native``) follow the PaliGemma processor: ``<image>*N{bos}{text}\\n`` with N = (image_size / patch_size)^2;
queries are ``{bos}{text}\\n``.  ``colpali_engine``: ColPali's processor (pages ``<image>*N{bos}{bos}{text}\\n``
as PaliGemma's processor expands its ``<image><bos>`` prompt; queries ``{bos}{text}`` through the tokenizer's
own special tokens); ``transformers``: ``ColPaliProcessor``'s (queries ``{bos}{text}\\n``).  ``token_type_ids``
are all 0 (the whole input is the bidirectional prefix: what transformers' PaliGemma does for an unpadded input
without ``token_type_ids``, such as a query, whereas a padded batch without them switches to causal attention and
makes an embedding depend on its batch), and positions start at 1 as in PaliGemma, counted over attended tokens so
that left padding does not shift them.  ``pixel_values`` is [images, 3, H, W], one row per page.

Vision tower (``vision_module``): ``model.model.vision_tower`` (SigLIP); the ``multi_modal_projector``
stays trainable when the tower is frozen.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from PIL import Image

from .base import LANGUAGE_LINEAR, Backbone, ChatImage, InputFormat, position_ids_from_mask

PALIGEMMA_FORMATS = {
    "native": InputFormat(query="{bos}{text}\n", page="{image}{bos}{text}\n"),
    "colpali_engine": InputFormat(query="{bos}{text}", page="{image}{bos}{bos}{text}\n", special_tokens=True),
    "transformers": InputFormat(query="{bos}{text}\n", page="{image}{bos}{text}\n"),
}


class SiglipGemma(Backbone):
    """What PaliGemma and Gemma3 share: a SigLIP ``vision_tower`` whose image is one row of ``pixel_values``
    [images, 3, H, W] and a fixed run of image tokens (``image_token_id``) per image, in front of a Gemma LM."""

    lora_language = rf".*language_model.*\.{LANGUAGE_LINEAR}"
    lora_vision = (r".*vision_tower\..*encoder\.layers\.\d+\."
                   r"(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.fc1|mlp\.fc2)")
    default_page_prompt = "Describe the image."

    def images_per_example(self, batch: Mapping[str, torch.Tensor]) -> list[int]:
        return (batch["input_ids"] == self.model_config.image_token_id).any(-1).long().tolist()

    def rows_per_image(self, batch: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
        return {"pixel_values": [1] * batch["pixel_values"].shape[0]}

    def vision_module(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.base_model(model).vision_tower


class PaliGemma(SiglipGemma):
    name = "paligemma"
    model_types = ("paligemma",)
    input_formats = PALIGEMMA_FORMATS
    chat_placeholders = ("<image>",)

    @property
    def image_seq_len(self) -> int:
        vision = self.model_config.vision_config
        return (vision.image_size // vision.patch_size) ** 2

    @property
    def image_token(self) -> str:
        return self.tokenizer.convert_ids_to_tokens(self.model_config.image_token_id)

    def image_inputs(self, image: Image.Image) -> tuple[str, dict[str, torch.Tensor]]:
        pixels = self.image_processor(images=[image], return_tensors="pt")
        return self.image_token * self.image_seq_len, {"pixel_values": pixels["pixel_values"]}

    def chat_image(self, image: Image.Image) -> ChatImage:
        """The image tokens then BOS, as PaliGemma's processor expands a prompt's ``<image>``."""
        chat = super().chat_image(image)
        return replace(chat, tokens=chat.tokens + self.tokenizer.bos_token)

    def model_inputs(self, batch: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, Any]:
        inputs = super().model_inputs(batch, dtype)
        inputs["position_ids"] = position_ids_from_mask(batch["attention_mask"], start=1)
        inputs["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        return inputs
