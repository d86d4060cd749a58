"""Idefics3 (SigLIP + Llama LM; also SmolVLM-style ColIdefics3 checkpoints) adapter.

Pages (``native``): ``{bos}User:{image}{text}<end_of_utterance>\\nAssistant:{eos}`` where ``{image}`` is the
processor's layout: per tile ``<fake_token_around_image><row_r_col_c><image>*N`` rows separated by newlines, then the
global image ``<fake_token_around_image><global-img><image>*N<fake_token_around_image>``;
N = (image_size / patch_size)^2 / scale_factor^2.  ``pixel_values`` is [images, tiles, 3, H, W] with
all-zero padding tiles (the model drops them) and ``pixel_attention_mask`` marks real pixels; a batch pads
the tile dimension (and H, W) to its largest example, a chunk trims it back.

``colpali_engine``: ColIdefics3's processor (queries ``{text}``, pages
``<|im_start|>User:{image}{text}<end_of_utterance>\\nAssistant:``, both through the tokenizer's own special tokens).

Vision tower (``vision_module``): ``model.model.vision_model`` (SigLIP); the ``connector`` (pixel shuffle +
projection) stays trainable when the tower is frozen.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from .base import LANGUAGE_LINEAR, Backbone, InputFormat, position_ids_from_mask

FAKE, GLOBAL, IMAGE = "<fake_token_around_image>", "<global-img>", "<image>"
IDEFICS3_FORMATS = {
    "native": InputFormat(query="{bos}User:{text}<end_of_utterance>\nAssistant:{eos}",
                          page="{bos}User:{image}{text}<end_of_utterance>\nAssistant:{eos}"),
    "colpali_engine": InputFormat(query="{text}", page="<|im_start|>User:{image}{text}<end_of_utterance>\nAssistant:",
                                  special_tokens=True),
}


class Idefics3(Backbone):
    name = "idefics3"
    model_types = ("idefics3",)
    lora_language = rf".*text_model.*\.{LANGUAGE_LINEAR}"
    lora_vision = (r".*vision_model\.encoder\.layers\.\d+\."
                   r"(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.fc1|mlp\.fc2)")
    image_keys = ("pixel_values", "pixel_attention_mask")
    input_formats = IDEFICS3_FORMATS
    chat_placeholders = (IMAGE,)

    @property
    def image_seq_len(self) -> int:
        vision = self.model_config.vision_config
        return int((vision.image_size // vision.patch_size) ** 2 / self.pixel_shuffle**2)

    @property
    def pixel_shuffle(self) -> int:
        """The connector's pixel-shuffle factor (``scale_factor`` in Idefics3's config)."""
        return self.model_config.scale_factor

    def set_resolution(self, max_pixels: int | None, max_visual_tokens: int | None) -> None:
        """Caps the resized longest edge, which sets how many tiles an image is split into."""
        tile = self.image_processor.max_image_size["longest_edge"]
        caps = []
        if max_pixels:
            caps.append(int(max_pixels**0.5))
        if max_visual_tokens:  # n*n tiles plus the global image
            caps.append(tile * max(1, int((max_visual_tokens // self.image_seq_len - 1) ** 0.5)))
        if caps:
            self.image_processor.size = {"longest_edge": max(tile, min(caps) // tile * tile)}

    def image_string(self, rows: int, cols: int) -> str:
        """The processor's placeholder layout for an image split into rows x cols tiles."""
        tokens = IMAGE * self.image_seq_len
        global_image = f"{FAKE}{GLOBAL}{tokens}{FAKE}"
        if rows == 0 and cols == 0:
            return global_image
        grid = "".join("".join(f"{FAKE}<row_{r + 1}_col_{c + 1}>{tokens}" for c in range(cols)) + "\n"
                       for r in range(rows))
        return f"{grid}\n{global_image}"

    def image_inputs(self, image: Image.Image) -> tuple[str, dict[str, torch.Tensor]]:
        pixels = self.image_processor(images=[[image]], return_tensors="pt", return_row_col_info=True)
        image_text = self.image_string(int(pixels["rows"][0][0]), int(pixels["cols"][0][0]))
        return image_text, {"pixel_values": pixels["pixel_values"],
                            "pixel_attention_mask": pixels["pixel_attention_mask"].bool()}

    def collate_images(self, tensors: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Pads tiles (dim 1) and pixels (H, W) with zeros to the largest example, then concatenates."""
        present = [t for t in tensors if t]
        if not present:
            return {}
        tiles = max(t["pixel_values"].shape[1] for t in present)
        height = max(t["pixel_values"].shape[-2] for t in present)
        width = max(t["pixel_values"].shape[-1] for t in present)
        return {key: torch.cat([_pad_to(t[key], tiles, height, width) for t in present])
                for key in self.image_keys}

    @property
    def image_start_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(GLOBAL)

    def rows_per_image(self, batch: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
        return {key: [1] * batch["pixel_values"].shape[0] for key in self.image_keys}

    def split(self, batch: Mapping[str, torch.Tensor], chunk_size: int) -> list[dict[str, torch.Tensor]]:
        """Per-example chunks, with tile / pixel padding trimmed to the chunk's largest image."""
        chunks = super().split(batch, chunk_size)
        for chunk in chunks:
            if "pixel_attention_mask" in chunk:
                mask = chunk["pixel_attention_mask"]
                tiles = int(mask.flatten(2).any(-1).sum(-1).max())
                height = int(mask.any(-1).sum(-1).max())
                width = int(mask.any(-2).sum(-1).max())
                chunk["pixel_values"] = chunk["pixel_values"][:, :tiles, :, :height, :width]
                chunk["pixel_attention_mask"] = mask[:, :tiles, :height, :width]
        return chunks

    def model_inputs(self, batch: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, Any]:
        inputs = super().model_inputs(batch, dtype)
        inputs["position_ids"] = position_ids_from_mask(batch["attention_mask"])
        if "pixel_attention_mask" in batch:
            inputs["pixel_attention_mask"] = batch["pixel_attention_mask"]
        return inputs

    def vision_module(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.base_model(model).vision_model


def _pad_to(tensor: torch.Tensor, tiles: int, height: int, width: int) -> torch.Tensor:
    """Zero-pads [n, tiles, (3,) H, W] to the given tile count and spatial size."""
    pad = [0, width - tensor.shape[-1], 0, height - tensor.shape[-2]]
    pad += [0, 0] * (tensor.dim() - 4) + [0, tiles - tensor.shape[1]]
    return F.pad(tensor, pad)
