"""The backbone adapter interface: everything that differs between VLM families lives here.

An adapter knows, for one model family,
- how to turn a query text or a page (image + optional text) into token ids plus the image tensors of that
  one example (``example``), expanding the image placeholder into the model's image tokens;
- how to collate examples into a padded batch (``collate``) and split a batch into per-example chunks
  (``split``) such that each chunk is exactly what ``collate`` would have produced for those examples,
  up to extra padding;
- how to run the model to the language model's last hidden states (``hidden_states``);
- which module is the vision tower (``vision_module``) and which modules LoRA targets (``lora_targets``);
- for chat generation (``query_generation``), what a chat template renders a page image as and the same image
  tokens and tensors that retrieval inputs use (``chat_image``), and the batch ``generate`` takes (``chat_batch``).

Inputs are built from the checkpoint's own tokenizer and image processor (loaded with the transformers
Auto classes).  The placeholder expansion mirrors the model's processor class; doing it here keeps the
adapters independent of the video processors that some processor classes insist on constructing.

Input formats: families that published retrievers use (Qwen2-VL / Qwen2.5-VL, PaliGemma, Idefics3) describe their
prompt layouts as :class:`InputFormat` templates, one per library that defines a layout (``native``: ours;
``colpali_engine``, ``transformers``, ``dse``: the reference processors of published checkpoints).  The adapter
only expands the image placeholder (``image_inputs``); the template says where it goes, so a published
checkpoint reads exactly the token sequence its own processor builds.
"""
from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

from data_prep.errors import InputError


logger = logging.getLogger(__name__)

# The text model's attention and MLP projections: the LoRA language preset of every adapter here.
LANGUAGE_LINEAR = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
# Side of the blank image a query carries when its template has an ``{image}`` slot (DSE's 28x28 dummy image).
QUERY_IMAGE_SIDE = 28


@dataclass(frozen=True)
class InputFormat:
    """One library's prompt layout for a family.

    ``query`` / ``page`` are templates with the slots ``{text}`` (the query, or the page prompt), ``{image}`` (the
    expanded image placeholder; a query template with it gets a blank image, as DSE's queries do), ``{bos}`` and
    ``{eos}`` (the tokenizer's tokens).  ``special_tokens``: whether the tokenizer adds its own special tokens
    (the reference processor calls it with the default ``add_special_tokens=True``).  ``sequential_positions``:
    1-D positions for pages too (transformers' ``ColQwen2ForRetrieval`` runs the language model without M-RoPE).
    """

    query: str
    page: str
    special_tokens: bool = False
    sequential_positions: bool = False


def fill(template: str, **slots: str) -> str:
    """``template`` with each ``{name}`` slot replaced (plain replacement: braces in the values stay literal)."""
    for name, value in slots.items():
        template = template.replace("{" + name + "}", value)
    return template


@dataclass
class Example:
    """One tokenized query or page: token ids and the image tensors of its (at most one) image."""

    input_ids: list[int]
    tensors: dict[str, torch.Tensor]


@dataclass(frozen=True)
class ChatImage:
    """A page image as chat generation inputs: the chat template renders it as one of ``placeholders`` (the one
    found exactly once is replaced), ``tokens`` is the expanded image-token string that replaces it, and
    ``tensors`` are its image tensors."""

    placeholders: tuple[str, ...]
    tokens: str
    tensors: dict[str, torch.Tensor]


class Backbone:
    """Base adapter; subclasses fill in the family-specific parts."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    requires_remote_code: ClassVar[bool] = False
    # Regexes (peft ``target_modules`` as a string is a full-match regex) for LoRA presets.
    lora_language: ClassVar[str]
    lora_vision: ClassVar[str]
    # Keys of the batch that hold per-image tensors (in addition to input_ids / attention_mask).
    image_keys: ClassVar[tuple[str, ...]] = ("pixel_values",)
    default_page_prompt: ClassVar[str] = "What is shown in this page?"
    # Prompt layouts by name; families without any override ``query_template`` and ``page_example`` instead.
    input_formats: ClassVar[dict[str, InputFormat]] = {}
    # What a chat template renders an image as (``chat_image``); empty: chat generation cannot build this family's
    # inputs.
    chat_placeholders: ClassVar[tuple[str, ...]] = ()
    # Retrieval batches are padded on this side whatever ``EncoderConfig.padding_side`` says (None: as it says): a
    # family whose layers see pad tokens on one side (linear attention's recurrent state and causal convolution
    # have no mask) keeps them on the other, so that an example's embedding never depends on its batch.
    forced_padding_side: ClassVar[str | None] = None
    # Whether video clips are taken, as their frames in turn (``clip_example``), and what goes between two frames'
    # expanded placeholders inside the page template's image slot.
    takes_clips: ClassVar[bool] = False
    frame_separator: ClassVar[str] = ""
    # CUDA kernels of the family's fast path, as (module, pip package); on CUDA a missing one is warned about once
    # (transformers then runs its slow PyTorch reference implementation).
    cuda_kernels: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(self, tokenizer: Any, image_processor: Any, model_config: Any) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.model_config = model_config
        self.input_format: InputFormat | None = self.input_formats.get("native")

    def set_input_format(self, name: str) -> None:
        """Selects the prompt layout ``name`` (``native`` is always accepted)."""
        if name == "native" and not self.input_formats:
            return
        if name not in self.input_formats:
            raise ValueError(f"backbone {self.name!r} has no input format {name!r}; supported: "
                             f"{', '.join(sorted(self.input_formats)) or 'native'}")
        self.input_format = self.input_formats[name]

    @classmethod
    def auto_class(cls) -> Any:
        """The transformers Auto class of this family's models (a generative VLM's by default)."""
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText

    @classmethod
    def load_model(cls, path: Path, **kwargs: Any) -> torch.nn.Module:
        """Loads the checkpoint's transformers model (safetensors weights only)."""
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return cls.auto_class().from_pretrained(path, use_safetensors=True, **kwargs)

    # ------------------------------------------------------------------ inputs
    def set_resolution(self, max_pixels: int | None, max_visual_tokens: int | None) -> None:
        """Caps the page resolution (pixels or visual tokens per image); no-op where not applicable."""

    def text_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` with special tokens written literally in it, no automatic BOS/EOS."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def query_example(self, text: str) -> Example:
        """A query (already carrying its prefix and augmentation tokens); text-only unless the format gives
        queries an image slot."""
        fmt = self.input_format
        if fmt is not None and "{image}" in fmt.query:
            blank = Image.new("RGB", (QUERY_IMAGE_SIDE, QUERY_IMAGE_SIDE))
            return self.layout_example(fmt.query, text, blank)
        return Example(self.encode(self.query_template(text)), {})

    def query_template(self, text: str) -> str:
        """The full query string around ``text`` (chat markup, end-of-sequence token)."""
        return self.fill(self.input_format.query, text)

    def page_example(self, image: Image.Image, text: str) -> Example:
        """One page: the image placeholder expanded to image tokens, ``text`` after it, plus pixel tensors."""
        return self.layout_example(self.input_format.page, text, image)

    def layout_example(self, template: str, text: str, image: Image.Image) -> Example:
        """``template`` filled with ``text`` and the expanded placeholder of ``image``, plus its tensors."""
        image_text, tensors = self.image_inputs(image)
        return Example(self.encode(self.fill(template, text, image_text)), tensors)

    def clip_example(self, frames: Sequence[Image.Image], text: str, what: str) -> Example:
        """A video clip as several images: each frame's expanded placeholder in turn (``frame_separator`` between
        them) in the page template's image slot, their tensors concatenated as a batch's are."""
        if not self.takes_clips:
            raise InputError(f"{what}: a video clip; backbone {self.name!r} does not take clips (the Qwen-VL "
                             "families do)")
        parts = [self.image_inputs(frame) for frame in frames]
        image_text = self.frame_separator.join(part[0] for part in parts)
        return Example(self.encode(self.fill(self.input_format.page, text, image_text)),
                       self.collate_images([part[1] for part in parts]))

    def image_inputs(self, image: Image.Image) -> tuple[str, dict[str, torch.Tensor]]:
        """The expanded image placeholder string of ``image`` and its pixel tensors."""
        raise NotImplementedError

    def chat_image(self, image: Image.Image) -> ChatImage:
        """``image`` for chat generation: the expansion and tensors of retrieval inputs (``image_inputs``)."""
        return ChatImage(self.chat_placeholders, *self.image_inputs(image))

    def fill(self, template: str, text: str, image: str = "") -> str:
        """:func:`fill` with the tokenizer's ``{bos}`` / ``{eos}``; ``text`` goes in last, so slot names in a
        user's text stay literal."""
        return fill(template, bos=self.tokenizer.bos_token or "", eos=self.tokenizer.eos_token or "", image=image,
                    text=text)

    def encode(self, text: str) -> list[int]:
        """Token ids of a filled template; the tokenizer's own special tokens only where the format says so."""
        if self.input_format is not None and self.input_format.special_tokens:
            return self.tokenizer(text)["input_ids"]
        return self.text_ids(text)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    def collate(self, examples: Sequence[Example], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pads token ids to the longest example and concatenates the image tensors."""
        length = max(len(e.input_ids) for e in examples)
        ids = torch.full((len(examples), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(examples), length), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example.input_ids)
            cols = slice(length - n, length) if padding_side == "left" else slice(0, n)
            ids[row, cols] = torch.tensor(example.input_ids, dtype=torch.long)
            mask[row, cols] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        batch.update(self.collate_images([e.tensors for e in examples]))
        return batch

    def collate_images(self, tensors: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Concatenates per-example image tensors along dim 0 (examples without an image add nothing)."""
        present = [t for t in tensors if t]
        if not present:
            return {}
        return {key: torch.cat([t[key] for t in present]) for key in present[0]}

    def chat_batch(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Chat generation batch: left-padded (``generate`` appends on the right), plus any input the bound model
        needs."""
        return self.collate(examples, padding_side="left")

    # ------------------------------------------------------------------ splitting
    def images_per_example(self, batch: Mapping[str, torch.Tensor]) -> list[int]:
        """Number of images of each example, read from its image placeholder tokens."""
        return (batch["input_ids"] == self.image_start_id).sum(-1).tolist()

    @property
    def image_start_id(self) -> int:
        """Id of a token that occurs exactly once per image in the expanded prompt."""
        raise NotImplementedError

    def rows_per_image(self, batch: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
        """For each image key, the rows of that tensor that belong to each image, in order."""
        raise NotImplementedError

    def split(self, batch: Mapping[str, torch.Tensor], chunk_size: int) -> list[dict[str, torch.Tensor]]:
        """Consecutive chunks of <= chunk_size examples; padding columns unused by a chunk are trimmed.

        Image tensors are flattened over the batch (rows per image differ by family), so each key is cut at
        the row offsets of the chunk's first and last image.
        """
        size = batch["input_ids"].shape[0]
        has_images = any(k in batch for k in self.image_keys)
        image_offsets = [0]
        for count in self.images_per_example(batch) if has_images else [0] * size:
            image_offsets.append(image_offsets[-1] + count)
        row_offsets = {}
        if has_images:
            for key, rows in self.rows_per_image(batch).items():
                row_offsets[key] = [0]
                for r in rows:
                    row_offsets[key].append(row_offsets[key][-1] + r)
        chunks = []
        for start in range(0, size, chunk_size):
            stop = min(start + chunk_size, size)
            chunk = trim_padding({k: v[start:stop] for k, v in batch.items() if k not in self.image_keys})
            first, last = image_offsets[start], image_offsets[stop]
            if last > first:
                chunk.update({k: batch[k][off[first]:off[last]] for k, off in row_offsets.items()})
            chunks.append(chunk)
        return chunks

    # ------------------------------------------------------------------ model
    def model_inputs(self, batch: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, Any]:
        """Keyword arguments of the base model's forward; pixel tensors cast to ``dtype``."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if "pixel_values" in batch:
            inputs["pixel_values"] = batch["pixel_values"].to(dtype)
        return inputs

    def hidden_states(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Last hidden states [B, L, H] of the language model (no LM head is run)."""
        base = self.base_model(model)
        return base(**self.model_inputs(batch, model.dtype), use_cache=False).last_hidden_state

    def mm_token_types(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``mm_token_type_ids`` (1 on image tokens) where the bound model's forward takes it (models whose rotary
        positions follow the image spans read them; their processors return them)."""
        if "mm_token_type_ids" not in self.forward_parameters:
            return {}
        return {"mm_token_type_ids": (batch["input_ids"] == self.model_config.image_token_id).to(torch.int32)}

    @property
    def forward_parameters(self) -> frozenset[str]:
        """Names accepted by the base model's forward (differs across transformers releases)."""
        return self._forward_parameters

    def bind(self, model: torch.nn.Module) -> None:
        """Records facts about the loaded model that input building depends on."""
        self._forward_parameters = frozenset(inspect.signature(self.base_model(model).forward).parameters)

    @staticmethod
    def base_model(model: torch.nn.Module) -> torch.nn.Module:
        """The ``*Model`` inside a ``*ForConditionalGeneration`` (whose LM head retrieval never needs)."""
        return model.model

    def vision_module(self, model: torch.nn.Module) -> torch.nn.Module:
        """The vision tower: a module whose output is a pure function of the pixel inputs."""
        raise NotImplementedError


def warn_missing_kernels(backbone: Backbone, device: torch.device) -> None:
    """Warns once per family and process when the model runs on CUDA without its fast-path kernels."""
    if device.type == "cuda" and backbone.cuda_kernels:
        _warn_missing_kernels(backbone.name, backbone.cuda_kernels)


@functools.cache
def _warn_missing_kernels(name: str, kernels: tuple[tuple[str, str], ...]) -> None:
    missing = [package for module, package in kernels if importlib.util.find_spec(module) is None]
    if missing:
        logger.warning("%s on CUDA without %s (pip install %s): its linear-attention layers run on transformers' "
                       "slow PyTorch fallback", name, " / ".join(missing), " ".join(missing))


def position_ids_from_mask(mask: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Positions counting only attended tokens, so left padding does not shift them."""
    return (mask.long().cumsum(-1) - 1 + start).clamp(min=start)


def trim_padding(chunk: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drops sequence columns that are padding for every row of the chunk (either padding side)."""
    used = chunk["attention_mask"].bool().any(0).nonzero().flatten()
    if used.numel() == 0:
        return chunk
    first, last = int(used[0]), int(used[-1]) + 1
    return {k: (v[:, first:last] if v.dim() >= 2 and k in SEQUENCE_KEYS else v) for k, v in chunk.items()}


SEQUENCE_KEYS = frozenset({"input_ids", "attention_mask", "token_type_ids"})
