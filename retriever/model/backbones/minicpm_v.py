"""MiniCPM-V 2.5 / 2.6 adapter (remote code: loaded only with ``trust_remote_code=True``).

NOT TESTED: no MiniCPM-V checkpoint or remote code is available offline, so this adapter is written
against the remote code's public methods (image processor ``get_slice_image_placeholder``, model
``get_vllm_embedding`` and ``llm.model``) and has never been run.  No tiny model exists for it.

Pages: ``<|im_start|>user\\n{placeholder}\\n{text}<|im_end|>\\n<|im_start|>assistant\\n{eos}``; the placeholder
is the overview image plus a grid of slices, each ``<image>``/``<slice>`` + unk * image_feature_size +
``</image>``/``</slice>``.  The image processor returns, per slice, patches [3, patch, h*w] and the grid size
``tgt_sizes`` (h, w); the batch stores the slices of all pages zero-padded to the longest slice
[S, 3, patch, L] with ``tgt_sizes`` [S, 2], and the model inputs are rebuilt into the per-example lists the
remote code expects (``image_bound`` from the slice start / end tokens).

Vision tower (``vision_module``): ``model.vpm`` (navit SigLIP); the ``resampler`` stays trainable when the
tower is frozen.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from .base import Backbone, Example, position_ids_from_mask


class MiniCPMV(Backbone):
    name = "minicpm_v"
    model_types = ("minicpmv",)
    requires_remote_code = True
    lora_language = (r".*llm\.model\.layers\.\d+\."
                     r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))")
    lora_vision = r".*vpm\.encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.fc1|mlp\.fc2)"
    image_keys = ("pixel_values", "tgt_sizes")

    @classmethod
    def load_model(cls, path: Path, **kwargs: Any) -> torch.nn.Module:
        from transformers import AutoModel

        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return AutoModel.from_pretrained(path, use_safetensors=True, **kwargs)

    @staticmethod
    def base_model(model: torch.nn.Module) -> torch.nn.Module:
        return model

    def set_resolution(self, max_pixels: int | None, max_visual_tokens: int | None) -> None:
        """Caps the number of slices (each slice ~ scale_resolution^2 pixels, image_feature_size tokens)."""
        caps = []
        if max_pixels:
            caps.append(max_pixels // self.image_processor.scale_resolution**2)
        if max_visual_tokens:
            caps.append(max_visual_tokens // self.image_processor.image_feature_size - 1)
        if caps:
            self.image_processor.max_slice_nums = max(1, min(caps))

    def query_template(self, text: str) -> str:
        return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n{self.tokenizer.eos_token}"

    def page_example(self, image: Image.Image, text: str) -> Example:
        processed = self.image_processor.preprocess([[image]], return_tensors=None)
        slices = [torch.as_tensor(s) for s in processed["pixel_values"][0]]
        sizes = torch.as_tensor(processed["tgt_sizes"][0]).long().reshape(-1, 2)
        placeholder = self.image_processor.get_slice_image_placeholder(image.size, 0)
        prompt = (f"<|im_start|>user\n{placeholder}\n{text}<|im_end|>\n<|im_start|>assistant\n"
                  f"{self.tokenizer.eos_token}")
        return Example(self.text_ids(prompt), {"pixel_values": _pad_slices(slices), "tgt_sizes": sizes})

    def collate_images(self, tensors: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        present = [t for t in tensors if t]
        if not present:
            return {}
        slices = [s for t in present for s in t["pixel_values"]]
        return {"pixel_values": _pad_slices(slices), "tgt_sizes": torch.cat([t["tgt_sizes"] for t in present])}

    @property
    def image_start_id(self) -> int:
        return self.tokenizer.im_start_id

    def _slice_starts(self, input_ids: torch.Tensor) -> torch.Tensor:
        return (input_ids == self.tokenizer.im_start_id) | (input_ids == self.tokenizer.slice_start_id)

    def _slice_ends(self, input_ids: torch.Tensor) -> torch.Tensor:
        return (input_ids == self.tokenizer.im_end_id) | (input_ids == self.tokenizer.slice_end_id)

    def rows_per_image(self, batch: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
        per_example = self._slice_starts(batch["input_ids"]).sum(-1)
        counts = [int(n) for n in per_example if n > 0]
        return {"pixel_values": counts, "tgt_sizes": counts}

    def model_inputs(self, batch: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, Any]:
        """The remote code's ``data`` dict: per-example lists of slices, grid sizes and token bounds."""
        ids = batch["input_ids"]
        starts, ends = self._slice_starts(ids), self._slice_ends(ids)
        pixel_values, tgt_sizes, bounds = [], [], []
        offset = 0
        for row in range(ids.shape[0]):
            n = int(starts[row].sum())
            sizes = batch["tgt_sizes"][offset:offset + n] if n else torch.zeros(0, 2, dtype=torch.long)
            pixel_values.append([batch["pixel_values"][offset + i, :, :, : int(h * w)].to(dtype)
                                 for i, (h, w) in enumerate(sizes.tolist())])
            tgt_sizes.append(sizes)
            bounds.append(torch.stack([starts[row].nonzero().flatten() + 1, ends[row].nonzero().flatten()], -1))
            offset += n
        return {"input_ids": ids, "attention_mask": batch["attention_mask"], "pixel_values": pixel_values,
                "tgt_sizes": tgt_sizes, "image_bound": bounds,
                "position_ids": position_ids_from_mask(batch["attention_mask"])}

    def hidden_states(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        data = self.model_inputs(batch, model.dtype)
        embeddings, _ = model.get_vllm_embedding(data)
        out = model.llm.model(inputs_embeds=embeddings, attention_mask=data["attention_mask"],
                              position_ids=data["position_ids"], use_cache=False)
        return out.last_hidden_state

    def vision_module(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.vpm


def _pad_slices(slices: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stacks [3, patch, L_i] slices into [S, 3, patch, max L], zero-padded."""
    length = max(s.shape[-1] for s in slices)
    return torch.stack([F.pad(s, (0, length - s.shape[-1])) for s in slices])
