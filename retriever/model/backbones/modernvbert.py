"""ModernVBERT (SigLIP + ModernBERT, an encoder-only VLM; the ColModernVBERT backbone) adapter.

Its inputs are Idefics3's (the same tile grid of ``<fake_token_around_image><row_r_col_c><image>*N`` and global image,
the same ``User:...<end_of_utterance>\\nAssistant:`` turn, ``pixel_values`` [images, tiles, 3, H, W] with a pixel
mask), so the adapter is :class:`~retriever.model.backbones.idefics3.Idefics3`'s with another model: a
``ModernVBertModel`` (loaded with ``AutoModel``: it has no generative head) whose text model attends bidirectionally,
so the ``cls`` or ``mean`` pooling of an encoder is the natural dense head. No chat generation (not a generator).
``transformers`` and ``colpali_engine``: the ColModernVBERT processors' layout (queries ``{text}`` + 10 x
``<end_of_utterance>``, pages ``<|begin_of_text|>User:{image}Describe the image.<end_of_utterance>\nAssistant:``, with
the tokenizer's own special tokens).

Vision tower (``vision_module``): ``model.vision_model`` (SigLIP); the ``connector`` stays trainable when the tower
is frozen.
"""
from __future__ import annotations

from typing import Any

import torch

from .base import InputFormat
from .idefics3 import IDEFICS3_FORMATS, Idefics3


# The layout of both ColModernVBERT processors (transformers' and colpali-engine's).
MODERNVBERT_RETRIEVAL = InputFormat(query="{text}", special_tokens=True,
                                    page="<|begin_of_text|>User:{image}{text}<end_of_utterance>\nAssistant:")


class ModernVBert(Idefics3):
    name = "modernvbert"
    model_types = ("modernvbert",)
    lora_language = r".*text_model.*\.(attn\.Wqkv|attn\.Wo|mlp\.Wi|mlp\.Wo)"
    chat_placeholders = ()
    input_formats = {"native": IDEFICS3_FORMATS["native"], "colpali_engine": MODERNVBERT_RETRIEVAL,
                     "transformers": MODERNVBERT_RETRIEVAL}

    @property
    def pixel_shuffle(self) -> int:
        return self.model_config.pixel_shuffle_factor

    @classmethod
    def auto_class(cls) -> Any:
        from transformers import AutoModel

        return AutoModel

    @staticmethod
    def base_model(model: torch.nn.Module) -> torch.nn.Module:
        return model
