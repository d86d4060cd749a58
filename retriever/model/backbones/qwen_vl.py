"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3.5 adapter.

Pages: ``<|im_start|>user\\n<|vision_start|><|image_pad|>*N<|vision_end|>{text}<|im_end|>\\n<|im_start|>assistant\\n
<|endoftext|>`` (the DSE layout), N = grid_t*grid_h*grid_w / merge_size**2.  Queries use the same chat turn
without the image.  The image processor flattens all patches of a batch into one ``pixel_values`` matrix;
``image_grid_thw`` gives each image's patch grid, so an image owns ``prod(grid)`` rows.  Multimodal rotary
positions are computed by the model from ``attention_mask``, so left padding does not shift them.

Vision tower (``vision_module``): ``model.model.visual`` — patch embedding, ViT blocks and the patch merger;
its output depends only on ``pixel_values`` and ``grid_thw``.

Qwen3-VL has the same prompt layout, image processor (16 px patches instead of 14) and placeholder expansion; its
vision tower also returns DeepStack features (merged outputs of some ViT blocks, added to the first text layers'
hidden states at the image tokens), which are part of the tower's output and so cached and replayed with it.

Qwen3.5 has the same inputs and vision tower (without DeepStack); its text model interleaves Gated DeltaNet
linear-attention layers with full attention. Their causal convolution and recurrent state take no attention mask,
so left padding would flow into the state of the real tokens (on the tiny model: 1e-5 in float64): its batches are
always right-padded (``forced_padding_side``), which leaves every example's embedding that of the example alone.
On a GPU, transformers runs those layers with flash-linear-attention / causal-conv1d kernels when installed; here
(CPU) with its reference PyTorch implementation.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from .base import LANGUAGE_LINEAR, Backbone, Example, InputFormat, position_ids_from_mask

# Gated DeltaNet's fast path on CUDA: flash-linear-attention's chunked delta rule and the causal-conv1d kernel.
LINEAR_ATTENTION_KERNELS = (("fla", "flash-linear-attention"), ("causal_conv1d", "causal-conv1d"))
COLQWEN_PAGE = "<|im_start|>user\n<|vision_start|>{image}<|vision_end|>{text}<|im_end|><|endoftext|>"
DSE_TURN = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|>{image}<|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n<|endoftext|>")
QWEN_FORMATS = {
    "native": InputFormat(
        query="<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n<|endoftext|>",
        page="<|im_start|>user\n<|vision_start|>{image}<|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n"
             "<|endoftext|>"),
    "colpali_engine": InputFormat(query="{text}", page=COLQWEN_PAGE, special_tokens=True),
    "transformers": InputFormat(query="{text}\n", page=COLQWEN_PAGE, special_tokens=True,
                                sequential_positions=True),
    "dse": InputFormat(query=DSE_TURN, page=DSE_TURN, special_tokens=True),
}


class QwenVL(Backbone):
    name = "qwen2_vl"
    model_types = ("qwen2_vl",)
    lora_language = rf".*language_model.*\.{LANGUAGE_LINEAR}"
    lora_vision = (r".*visual\.blocks\.\d+\."
                   r"(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2|mlp\.gate_proj|mlp\.up_proj|mlp\.down_proj)")
    image_keys = ("pixel_values", "image_grid_thw")
    default_page_prompt = "What is shown in this image?"
    input_formats = QWEN_FORMATS
    chat_placeholders = ("<|image_pad|>",)
    # A clip is its frames as images, each in its own vision span (the video processor, which would feed
    # pixel_values_videos, needs torchvision).
    takes_clips = True
    frame_separator = "<|vision_end|><|vision_start|>"

    @property
    def merge(self) -> int:
        return self.image_processor.merge_size

    def set_resolution(self, max_pixels: int | None, max_visual_tokens: int | None) -> None:
        """Caps the image processor's pixel range (``smart_resize`` keeps the aspect ratio)."""
        token_pixels = (self.image_processor.patch_size * self.merge) ** 2  # one visual token after merging
        caps = [c for c in (max_pixels, max_visual_tokens and max_visual_tokens * token_pixels) if c]
        if not caps:
            return
        longest = min(caps)
        shortest = min(self.image_processor.size.get("shortest_edge", longest), longest)
        self.image_processor.size = {"shortest_edge": shortest, "longest_edge": longest}
        for attr, value in (("min_pixels", shortest), ("max_pixels", longest)):
            if hasattr(self.image_processor, attr):
                setattr(self.image_processor, attr, value)

    def image_inputs(self, image: Image.Image) -> tuple[str, dict[str, torch.Tensor]]:
        pixels = self.image_processor(images=[image], return_tensors="pt")
        grid = pixels["image_grid_thw"]
        n_tokens = int(grid.prod()) // self.merge**2
        return "<|image_pad|>" * n_tokens, {"pixel_values": pixels["pixel_values"], "image_grid_thw": grid}

    @property
    def image_start_id(self) -> int:
        return self.model_config.vision_start_token_id

    def rows_per_image(self, batch: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
        grid = batch["image_grid_thw"]
        return {"pixel_values": grid.prod(-1).tolist(), "image_grid_thw": [1] * grid.shape[0]}

    def model_inputs(self, batch: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, Any]:
        """Pages: the model derives M-RoPE positions from the mask; text only: 1-D positions from the mask."""
        inputs = super().model_inputs(batch, dtype)
        if "image_grid_thw" in batch and self.input_format.sequential_positions:
            inputs["image_grid_thw"] = batch["image_grid_thw"]
            inputs["position_ids"] = position_ids_from_mask(batch["attention_mask"]).expand(3, -1, -1)
            return inputs
        if "image_grid_thw" not in batch:
            inputs["position_ids"] = position_ids_from_mask(batch["attention_mask"])
            return inputs
        inputs["image_grid_thw"] = batch["image_grid_thw"]
        inputs.update(self.token_types(batch))
        return inputs

    def chat_batch(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        batch = super().chat_batch(examples)
        batch.update(self.token_types(batch))
        return batch

    def token_types(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``mm_token_type_ids`` of a batch with images (newer transformers releases require it)."""
        return self.mm_token_types(batch) if "image_grid_thw" in batch else {}

    def vision_module(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.base_model(model).visual


class Qwen25VL(QwenVL):
    name = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)


class Qwen3VL(QwenVL):
    name = "qwen3_vl"
    model_types = ("qwen3_vl",)
    lora_vision = r".*visual\.blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.linear_fc1|mlp\.linear_fc2)"


class Qwen35(Qwen3VL):
    name = "qwen3_5"
    model_types = ("qwen3_5",)
    lora_language = (r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|"
                     r"in_proj_qkv|in_proj_z|in_proj_b|in_proj_a|out_proj)")
    forced_padding_side = "right"
    cuda_kernels = LINEAR_ATTENTION_KERNELS
