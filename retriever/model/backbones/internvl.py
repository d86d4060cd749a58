"""InternVL (transformers-native ``InternVLForConditionalGeneration``: InternViT + Qwen2/Llama LM) adapter.

Pages: ``<|im_start|>user\\n<img><IMG_CONTEXT>*N</img>\\n{text}<|im_end|>\\n<|im_start|>assistant\\n{eos}``
with N = tiles * tokens_per_tile.  The image processor (GotOcr2) crops an image into up to ``max_patches``
square tiles plus a thumbnail; ``pixel_values`` stacks the tiles of all images [T, 3, H, W] and
``num_patches`` gives the tile count per image.  Positions are passed explicitly, counted over attended
tokens, so padding side does not change them.

Vision tower (``vision_module``): ``model.model.vision_tower`` (InternViT); the pixel-shuffle and the
``multi_modal_projector`` MLP after it stay trainable when the tower is frozen.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from PIL import Image

from .base import LANGUAGE_LINEAR, Backbone, ChatImage, Example, position_ids_from_mask

PAGE_TEMPLATE = "<|im_start|>user\n{image}\n{text}<|im_end|>\n<|im_start|>assistant\n{eos}"


class InternVL(Backbone):
    name = "internvl"
    model_types = ("internvl",)
    lora_language = rf".*language_model.*\.{LANGUAGE_LINEAR}"
    lora_vision = (r".*vision_tower\.encoder\.layer\.\d+\."
                   r"(attention\.(q_proj|k_proj|v_proj|projection_layer)|mlp\.fc1|mlp\.fc2)")
    image_keys = ("pixel_values", "num_patches")
    chat_placeholders = ("<IMG_CONTEXT>", "<image>")

    @property
    def tokens_per_tile(self) -> int:
        vision = self.model_config.vision_config
        size, patch = _pair(vision.image_size), _pair(vision.patch_size)
        ratio = self.model_config.downsample_ratio
        return int((size[0] // patch[0]) * (size[1] // patch[1]) * ratio**2)

    def set_resolution(self, max_pixels: int | None, max_visual_tokens: int | None) -> None:
        """Caps the tile count (each tile is one fixed-size square, thumbnail included)."""
        tile = self.image_processor.size
        caps = []
        if max_pixels:
            caps.append(max_pixels // (tile["height"] * tile["width"]))
        if max_visual_tokens:
            caps.append(max_visual_tokens // self.tokens_per_tile)
        if caps:
            self.image_processor.max_patches = max(1, min(caps))

    def query_template(self, text: str) -> str:
        return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n{self.tokenizer.eos_token}"

    def page_example(self, image: Image.Image, text: str) -> Example:
        return self.layout_example(PAGE_TEMPLATE, text, image)

    def image_inputs(self, image: Image.Image) -> tuple[str, dict[str, torch.Tensor]]:
        pixels = self.image_processor(images=[image], return_tensors="pt")
        tiles = int(pixels["num_patches"][0])
        image_text = f"<img>{'<IMG_CONTEXT>' * (tiles * self.tokens_per_tile)}</img>"
        return image_text, {"pixel_values": pixels["pixel_values"],
                            "num_patches": torch.as_tensor(pixels["num_patches"]).long()}

    def chat_image(self, image: Image.Image) -> ChatImage:
        """Without ``num_patches``: only splitting reads it, and ``generate`` refuses inputs the model does not
        take."""
        chat = super().chat_image(image)
        return replace(chat, tensors={"pixel_values": chat.tensors["pixel_values"]})

    @property
    def image_start_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids("<img>")

    def rows_per_image(self, batch: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
        tiles = batch["num_patches"].tolist()
        return {"pixel_values": tiles, "num_patches": [1] * len(tiles)}

    def model_inputs(self, batch: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, Any]:
        inputs = super().model_inputs(batch, dtype)
        inputs["position_ids"] = position_ids_from_mask(batch["attention_mask"])
        return inputs

    def vision_module(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.base_model(model).vision_tower


def _pair(value: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))
