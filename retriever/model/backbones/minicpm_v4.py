"""MiniCPM-V 4.6 / 4.7 adapter: transformers' native classes (``minicpmv4_6`` / ``minicpmv4_7``), no remote code.

The model: a NaViT SigLIP tower whose window-attention merger (after layer ``insert_layer_id``) merges 2x2 patches,
an MLP merger that merges 2x2 again into the language model's width (``16x``; ``4x`` skips the window merger),
and a Qwen3.5 text model (Gated DeltaNet linear attention beside full attention). 4.7 adds canvas M-RoPE: the model
lays the overview and the slices of an image on one 2-D canvas, from ``mm_token_type_ids`` and the markers around
each crop.

Pages mirror ``MiniCPMV4_6Processor`` (4.7's is the same for images): the image processor cuts a large page into an
overview plus a grid of slices (``max_slice_nums``, ``scale_resolution``); the placeholder becomes
``<image_id>0</image_id>`` (``use_image_id``), ``<image>`` + ``<|image_pad|>`` x n + ``</image>`` for the overview,
then one ``<slice>`` + ``<|image_pad|>`` x n + ``</slice>`` per slice, rows joined by ``\\n``; n = h*w/16 (``4x``: /4)
for a crop of h x w patches. The processor packs every crop's patches along the last axis of one
``pixel_values`` [1, 3, patch, L] (``target_sizes`` [crops, 2] gives each crop's patch grid). Batches here hold one
row per patch ([patches, 3, patch, patch]) instead, so that chunking cuts them at image boundaries like every other
family; ``model_inputs`` packs them back exactly (a reshape, no arithmetic).

The Qwen3.5 text model's causal convolution and recurrent state take no attention mask, so batches are always
right-padded (``forced_padding_side``), as for Qwen3.5 itself.

Vision tower (``vision_module``): ``model.model.vision_tower`` (embeddings, encoder, window merger); the MLP
``merger`` stays trainable when the tower is frozen.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from .base import Backbone, Example, InputFormat
from .qwen_vl import LINEAR_ATTENTION_KERNELS, Qwen35

MINICPM_V4_FORMATS = {
    "native": InputFormat(
        query="<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n<|endoftext|>",
        page="<|im_start|>user\n{image}\n{text}<|im_end|>\n<|im_start|>assistant\n<|endoftext|>"),
}


class MiniCPMV46(Backbone):
    name = "minicpmv4_6"
    model_types = ("minicpmv4_6",)
    lora_language = Qwen35.lora_language
    lora_vision = (r".*vision_tower\.encoder\.layers\.\d+\."
                   r"(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.fc1|mlp\.fc2)")
    image_keys = ("pixel_values", "target_sizes")
    input_formats = MINICPM_V4_FORMATS
    chat_placeholders = ("<|image_pad|>",)
    forced_padding_side = "right"
    cuda_kernels = LINEAR_ATTENTION_KERNELS

    @property
    def tokens_per_patch_grid(self) -> int:
        """Patches per LLM token: 16 (``16x``: window merger and MLP merger) or 4 (``4x``)."""
        return 4 if self.image_processor.downsample_mode == "4x" else 16

    def set_resolution(self, max_pixels: int | None, max_visual_tokens: int | None) -> None:
        """Caps the slice count: a slice is about ``scale_resolution``² pixels; the overview counts as one."""
        side = self.image_processor.scale_resolution
        per_crop = (side // self.image_processor.patch_size) ** 2 // self.tokens_per_patch_grid
        caps = [c for c in (max_pixels and max_pixels // side**2, max_visual_tokens and max_visual_tokens // per_crop)
                if c]
        if caps:
            self.image_processor.max_slice_nums = max(1, min(caps) - 1)

    def image_inputs(self, image: Image.Image) -> tuple[str, dict[str, torch.Tensor]]:
        processed = self.image_processor(images=[image], return_tensors="pt")
        sizes = processed["target_sizes"]
        tokens = (sizes.prod(-1) // self.tokens_per_patch_grid).tolist()
        tok = self.tokenizer
        text = f"{tok.image_start_token}{tok.image_token * tokens[0]}{tok.image_end_token}"
        rows, cols = processed["grids"][0]
        crops = [f"{tok.slice_start_token}{tok.image_token * n}{tok.slice_end_token}" for n in tokens[1:]]
        text += "\n".join("".join(crops[r * cols:(r + 1) * cols]) for r in range(rows))
        if self.image_processor.use_image_id:
            text = f"{tok.image_id_start_token}0{tok.image_id_end_token}{text}"
        return text, {"pixel_values": patch_rows(processed["pixel_values"]), "target_sizes": sizes}

    @property
    def image_start_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.tokenizer.image_start_token)

    def rows_per_image(self, batch: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
        """Crops per image (the overview and one per ``<slice>``) and patch rows per image."""
        ids = batch["input_ids"]
        slice_id = self.tokenizer.convert_tokens_to_ids(self.tokenizer.slice_start_token)
        crops = [1 + int(n) for n, images in zip((ids == slice_id).sum(-1), (ids == self.image_start_id).sum(-1))
                 if images]
        patches = batch["target_sizes"].prod(-1).tolist()
        offsets = [sum(crops[:i]) for i in range(len(crops) + 1)]
        return {"target_sizes": crops,
                "pixel_values": [sum(patches[offsets[i]:offsets[i + 1]]) for i in range(len(crops))]}

    def model_inputs(self, batch: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, Any]:
        """The processor's packed ``pixel_values`` and ``target_sizes``; 4.7 also gets ``mm_token_type_ids`` (its
        canvas M-RoPE reads the crops from them). Positions are the model's own: right padding keeps them."""
        inputs: dict[str, Any] = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if "pixel_values" in batch:
            inputs["pixel_values"] = packed(batch["pixel_values"]).to(dtype)
            inputs["target_sizes"] = batch["target_sizes"]
            inputs.update(self.mm_token_types(batch))
        return inputs

    def chat_batch(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        batch = super().chat_batch(examples)
        if "pixel_values" in batch:
            batch["pixel_values"] = packed(batch["pixel_values"])
            batch.update(self.mm_token_types(batch))
        return batch

    def vision_module(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.base_model(model).vision_tower


class MiniCPMV47(MiniCPMV46):
    """The same inputs; the model adds canvas M-RoPE (from ``mm_token_type_ids``)."""

    name = "minicpmv4_7"
    model_types = ("minicpmv4_7",)


def patch_rows(pixel_values: torch.Tensor) -> torch.Tensor:
    """The processor's packed [1, C, P, N*P] (patches in row-major order along the last axis) as [N, C, P, P]."""
    _, channels, patch, length = pixel_values.shape
    return pixel_values[0].reshape(channels, patch, length // patch, patch).permute(2, 0, 1, 3).contiguous()


def packed(rows: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`patch_rows`: [N, C, P, P] -> [1, C, P, N*P]."""
    count, channels, patch, _ = rows.shape
    return rows.permute(1, 2, 0, 3).reshape(1, channels, patch, count * patch)
