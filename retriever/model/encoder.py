"""``RetrieverEncoder``: one encoder model over any registered VLM backbone.

Data flow: texts / page images -> ``prepare_*`` (backbone adapter builds token ids and pixel tensors, one
example at a time, then pads them into a batch) -> ``forward`` (the adapter runs the transformers model to
the language model's last hidden states; the dense or multi-vector head turns them into embeddings).

Design choices
- The backbone is the checkpoint's own transformers class (``AutoModelForImageTextToText`` unless the
  adapter says otherwise) with its own tokenizer and image processor; the LM head is never run.
- Each example is tokenized on its own and padded afterwards, positions are derived from the attention
  mask, and pooling reads the mask, so an embedding does not depend on its batch or the padding side.
  ``split_inputs`` cuts a prepared batch into per-example chunks whose forward passes concatenate to the
  whole batch's (what GradCache relies on).
- Loading, saving and merging (the checkpoint format) live in :mod:`retriever.model.saved`: ``load_encoder``,
  ``save_encoder``, ``save_merged``.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from data_prep.images import Clip, decode_item

from .backbones import Backbone
from .backbones.base import warn_missing_kernels
from .embeddings import MultiVector, unpad
from .heads import DenseHead, MultiVectorHead, matryoshka_prefixes
from .training_modes import LoraSettings, count_trainable, unwrap


@dataclass
class EncoderConfig:
    """How pages and queries become embeddings; saved as JSON next to the weights."""

    backbone: str
    head: Literal["dense", "multi"] = "dense"
    pooling: Literal["last", "mean", "weighted_mean", "cls"] = "last"
    projection_dim: int | None = None
    multi_dim: int = 128
    normalize: bool = True
    matryoshka_dims: list[int] | None = None
    truncate_dim: int | None = None  # inference: keep the first N coordinates (a Matryoshka size), re-normalised
    query_prefix: str = "Query: "
    query_augmentation_tokens: int = 0
    query_augmentation_token: str | None = None  # None: the tokenizer's pad token (else its eos token)
    page_prompt: str | None = None  # None: the backbone's default prompt
    max_pixels: int | None = None
    max_visual_tokens: int | None = None
    padding_side: Literal["left", "right"] = "right"
    input_format: str = "native"  # the backbone's prompt layout (see backbones.base.InputFormat)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EncoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown EncoderConfig fields: {sorted(unknown)}")
        return cls(**data)


class RetrieverEncoder(nn.Module):
    """A VLM backbone plus a dense or multi-vector head; see the module docstring."""

    def __init__(self, config: EncoderConfig, backbone: Backbone, model: nn.Module, head: nn.Module,
                 training_mode: str = "full", freeze_vision: bool = False,
                 lora: LoraSettings | None = None, identity: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.identity = identity  # of the checkpoint it was loaded from (retriever.model.identity)
        self.backbone = backbone
        self.model = model
        self.head = head
        self.training_mode = training_mode
        self.freeze_vision = freeze_vision
        self.lora = lora

    # ------------------------------------------------------------------ inputs
    @property
    def processor(self) -> Backbone:
        """The input builder (tokenizer + image processor + the backbone's prompt layout)."""
        return self.backbone

    def query_text(self, text: str) -> str:
        """The query as the model reads it: prefix, text and augmentation tokens (ColPali style)."""
        tokenizer = self.backbone.tokenizer
        augmentation = self.config.query_augmentation_token or tokenizer.pad_token or tokenizer.eos_token
        return f"{self.config.query_prefix}{text}{augmentation * self.config.query_augmentation_tokens}"

    def prepare_queries(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Token ids and attention mask of a batch of queries, padded on :attr:`padding_side`."""
        examples = [self.backbone.query_example(self.query_text(t)) for t in texts]
        return self.backbone.collate(examples, self.padding_side)

    def prepare_pages(self, images: Sequence[Image.Image | Clip | bytes], texts: Sequence[str] | None = None,
                      ids: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Model inputs of a batch of pages (and video clips, taken as their frames where the backbone does);
        an image that cannot be decoded raises naming its id."""
        ids = list(ids) if ids is not None else [f"#{i}" for i in range(len(images))]
        prompt = self.config.page_prompt if self.config.page_prompt is not None else \
            self.backbone.default_page_prompt
        examples = []
        for i, image in enumerate(images):
            text = prompt if texts is None or not texts[i] else f"{prompt}\n{texts[i]}"
            item = decode_item(image, ids[i])
            examples.append(self.backbone.clip_example(item.frames, text, ids[i]) if isinstance(item, Clip)
                            else self.backbone.page_example(item, text))
        return self.backbone.collate(examples, self.padding_side)

    @property
    def padding_side(self) -> str:
        """The side batches are padded on: ``config.padding_side`` unless the backbone forces one."""
        return self.backbone.forced_padding_side or self.config.padding_side

    def split_inputs(self, inputs: Mapping[str, Tensor], chunk_size: int) -> list[dict[str, Tensor]]:
        """Consecutive chunks of <= chunk_size examples whose forwards concatenate to the batch's forward."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return self.backbone.split(inputs, chunk_size)

    # ------------------------------------------------------------------ forward
    @property
    def hf_model(self) -> nn.Module:
        """The transformers model (inside the peft wrapper in LoRA mode)."""
        return unwrap(self.model)

    @property
    def multi_vector(self) -> bool:
        """Whether this encoder's head is multi-vector (token embeddings scored with MaxSim)."""
        return self.config.head == "multi"

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What decides this encoder's embeddings: the identity of the checkpoint it was loaded from, the weights'
        dtype and every encoder setting (head, pooling, dimensions, prompts, resolution). Resumable state built
        from embeddings (the evaluator's top-k, the miner's cache) records it and is recomputed when it changes."""
        return {"model checkpoint": self.identity, "dtype": str(self.dtype).removeprefix("torch."),
                **asdict(self.config)}

    @property
    def dtype(self) -> torch.dtype:
        return self.hf_model.dtype

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor | MultiVector:
        """Dense [B, D] embeddings or a ``MultiVector``; inputs are moved to the model's device."""
        device = self.device
        warn_missing_kernels(self.backbone, device)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        hidden = self.backbone.hidden_states(self.hf_model, inputs)
        return self.head(hidden, inputs["attention_mask"])

    def enable_activation_checkpointing(self) -> None:
        """Non-reentrant activation checkpointing of the backbone (exact under GradCache's replay).

        transformers 5.2x names it ``activation_checkpointing_enable``; older 5.x releases only have
        ``gradient_checkpointing_enable``."""
        model = self.hf_model
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def vision_module(self) -> nn.Module | None:
        """The vision tower, whose output is a pure function of the pixel inputs (see docs/MODELS.md)."""
        return self.backbone.vision_module(self.hf_model)

    @torch.no_grad()
    def encode_queries(self, texts: Sequence[str], batch_size: int = 16,
                       progress: bool = False) -> Tensor | list[Tensor]:
        """Embeddings of ``texts``: dense [N, D] or a list of [L_i, D] (float32, CPU)."""
        batches = (self.prepare_queries(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size))
        return self._encode(batches, len(texts), batch_size, progress, "queries")

    @torch.no_grad()
    def encode_pages(self, images: Sequence[Image.Image | bytes], batch_size: int = 8,
                     ids: Sequence[str] | None = None, progress: bool = False) -> Tensor | list[Tensor]:
        """Embeddings of page images: dense [N, D] or a list of [L_i, D] (float32, CPU)."""
        ids = list(ids) if ids is not None else [f"#{i}" for i in range(len(images))]
        batches = (self.prepare_pages(images[i:i + batch_size], ids=ids[i:i + batch_size])
                   for i in range(0, len(images), batch_size))
        return self._encode(batches, len(images), batch_size, progress, "pages")

    def _encode(self, batches: Iterator[dict[str, Tensor]], total: int, batch_size: int, progress: bool,
                what: str) -> Tensor | list[Tensor]:
        was_training = self.training
        self.eval()
        try:
            outputs: list = []
            for batch in tqdm(batches, total=-(-total // batch_size), desc=f"encoding {what}",
                              disable=not progress):
                out = self._truncated(self(batch))
                if isinstance(out, MultiVector):
                    outputs.extend(e.float().cpu() for e in unpad(out))
                else:
                    outputs.append(out.float().cpu())
        finally:
            self.train(was_training)
        if self.multi_vector:
            return outputs
        return torch.cat(outputs) if outputs else torch.empty(0, 0)

    def _truncated(self, out: Tensor | MultiVector) -> Tensor | MultiVector:
        """``out`` cut to ``config.truncate_dim`` coordinates and re-normalised (zero padding stays zero)."""
        dim = self.config.truncate_dim
        if dim is None:
            return out
        if isinstance(out, MultiVector):
            return MultiVector(matryoshka_prefixes(out.emb, [dim])[0], out.mask)
        return matryoshka_prefixes(out, [dim])[0]

    # ------------------------------------------------------------------ parameters
    @property
    def is_peft(self) -> bool:
        return self.model is not self.hf_model

    def trainable_parameter_count(self) -> int:
        return count_trainable(self)


def copy_module_output(output: Any) -> Any:
    """A shallow copy of a module output (ModelOutput / dict / tuple / tensor) for caching and replay.

    Callers of vision towers may mutate the returned ``ModelOutput`` in place (Qwen2-VL replaces
    ``pooler_output`` by a per-image tuple), so a cached output must be copied when recorded and again
    each time it is replayed.
    """
    if isinstance(output, dict):
        return type(output)(**output)
    if isinstance(output, (tuple, list)):
        return type(output)(output)
    return output


def build_head(config: EncoderConfig, hidden_size: int) -> nn.Module:
    """The head named by ``config.head``; checks the Matryoshka sizes against the output size."""
    if config.head not in ("dense", "multi"):
        raise ValueError(f"unknown head {config.head!r}; supported: dense, multi")
    if config.head == "multi":
        head: nn.Module = MultiVectorHead(hidden_size, config.multi_dim)
        dim = config.multi_dim
    else:
        head = DenseHead(hidden_size, config.pooling, config.projection_dim, config.normalize)
        dim = head.output_dim or hidden_size
    bad = [d for d in config.matryoshka_dims or [] if not 0 < d <= dim]
    if bad:
        raise ValueError(f"matryoshka_dims {bad} exceed the embedding size {dim}")
    _check_truncate_dim(config.truncate_dim, dim)
    return head


def _check_truncate_dim(truncate_dim: int | None, dim: int) -> None:
    if truncate_dim is not None and not 0 < truncate_dim <= dim:
        raise ValueError(f"truncate_dim {truncate_dim} is not in 1..{dim} (the embedding size)")


def text_hidden_size(model: nn.Module) -> int:
    """Hidden size of the language model (the head's input size)."""
    config = unwrap(model).config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return text.hidden_size
