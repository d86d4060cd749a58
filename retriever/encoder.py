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
- Save format (one directory, safetensors only): ``retriever_config.json`` (EncoderConfig + training
  mode), ``heads.safetensors``, the backbone as either a full transformers checkpoint (``config.json``,
  ``model*.safetensors``) or a peft adapter (``adapter_config.json``, ``adapter_model.safetensors``, whose
  ``base_model_name_or_path`` names the base checkpoint), and the tokenizer / image-processor files.
"""
from __future__ import annotations

import copy
import io
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

from .backbones import Backbone, backbone_for_model_type, get_backbone
from .heads import DenseHead, MultiVector, MultiVectorHead
from .training_modes import LoraSettings, apply_training_mode, count_trainable, unwrap

logger = logging.getLogger(__name__)
CONFIG_FILE = "retriever_config.json"
HEADS_FILE = "heads.safetensors"
ADAPTER_FILE = "adapter_config.json"


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
    query_prefix: str = "Query: "
    query_augmentation_tokens: int = 0
    page_prompt: str | None = None  # None: the backbone's default prompt
    max_pixels: int | None = None
    max_visual_tokens: int | None = None
    padding_side: Literal["left", "right"] = "right"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EncoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown EncoderConfig fields: {sorted(unknown)}")
        return cls(**data)


@dataclass
class SavedState:
    """The contents of ``retriever_config.json``."""

    encoder: EncoderConfig
    training_mode: str = "full"
    freeze_vision: bool = False
    lora: dict | None = field(default=None)


class RetrieverEncoder(nn.Module):
    """A VLM backbone plus a dense or multi-vector head; see the module docstring."""

    def __init__(self, config: EncoderConfig, backbone: Backbone, model: nn.Module, head: nn.Module,
                 training_mode: str = "full", freeze_vision: bool = False,
                 lora: LoraSettings | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.model = model
        self.head = head
        self.training_mode = training_mode
        self.freeze_vision = freeze_vision
        self.lora = lora

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | Path, config: EncoderConfig | None = None, *,
                        training_mode: str = "full", lora: LoraSettings | None = None,
                        freeze_vision: bool = False, torch_dtype: torch.dtype | None = None,
                        attn_implementation: str | None = None,
                        trust_remote_code: bool = False) -> RetrieverEncoder:
        """Loads a transformers checkpoint (fresh heads) or a directory written by ``save_pretrained``.

        The encoder is returned in eval mode (as transformers does); call ``.train()`` before training.
        """
        path = resolve_checkpoint(path)
        saved = read_saved_state(path) if (path / CONFIG_FILE).exists() else None
        if config is None:
            config = saved.encoder if saved else EncoderConfig(backbone=infer_backbone(path, trust_remote_code))
        adapter_cls = get_backbone(config.backbone)
        if adapter_cls.requires_remote_code and not trust_remote_code:
            raise ValueError(f"backbone {config.backbone!r} runs code from its checkpoint; pass "
                             "trust_remote_code=True (--trust_remote_code) if you trust it")
        check_checkpoint_files(path, need_weights=False)
        resume_lora = saved is not None and (path / ADAPTER_FILE).exists() and training_mode == "lora"
        model = load_backbone_weights(path, adapter_cls, training_mode, dtype=torch_dtype,
                                      attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        backbone = adapter_cls(tokenizer, load_image_processor(path, trust_remote_code), unwrap(model).config)
        backbone.set_resolution(config.max_pixels, config.max_visual_tokens)
        backbone.bind(unwrap(model))
        if resume_lora:  # the adapters keep training; the rest stays frozen as peft left it
            lora = lora or (LoraSettings(**saved.lora) if saved.lora else None)
            if freeze_vision:
                backbone.vision_module(unwrap(model)).requires_grad_(False)
        else:
            model = apply_training_mode(model, backbone, training_mode, lora, freeze_vision)
        head = build_head(config, text_hidden_size(model)).to(unwrap(model).dtype)
        if saved is not None and same_head(config, saved.encoder):
            head.load_state_dict(load_file(str(path / HEADS_FILE)))
        elif saved is not None:
            logger.warning("%s: head settings differ from the saved ones; starting with fresh heads", path)
        return cls(config, backbone, model, head, training_mode, freeze_vision, lora).eval()

    # ------------------------------------------------------------------ inputs
    @property
    def processor(self) -> Backbone:
        """The input builder (tokenizer + image processor + the backbone's prompt layout)."""
        return self.backbone

    def query_text(self, text: str) -> str:
        """The query as the model reads it: prefix, text and augmentation tokens (ColPali style)."""
        augmentation = (self.backbone.tokenizer.pad_token or self.backbone.tokenizer.eos_token)
        return f"{self.config.query_prefix}{text}{augmentation * self.config.query_augmentation_tokens}"

    def prepare_queries(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Token ids and attention mask of a batch of queries, padded on ``config.padding_side``."""
        examples = [self.backbone.query_example(self.query_text(t)) for t in texts]
        return self.backbone.collate(examples, self.config.padding_side)

    def prepare_pages(self, images: Sequence[Image.Image | bytes], texts: Sequence[str] | None = None,
                      ids: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Model inputs of a batch of pages; an image that cannot be decoded raises naming its id."""
        ids = list(ids) if ids is not None else [f"#{i}" for i in range(len(images))]
        prompt = self.config.page_prompt if self.config.page_prompt is not None else \
            self.backbone.default_page_prompt
        examples = []
        for i, image in enumerate(images):
            text = prompt if texts is None or not texts[i] else f"{prompt}\n{texts[i]}"
            examples.append(self.backbone.page_example(decode_image(image, ids[i]), text))
        return self.backbone.collate(examples, self.config.padding_side)

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
    def dtype(self) -> torch.dtype:
        return self.hf_model.dtype

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor | MultiVector:
        """Dense [B, D] embeddings or a ``MultiVector``; inputs are moved to the model's device."""
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
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
                out = self(batch)
                if isinstance(out, MultiVector):
                    outputs.extend(e[m].float().cpu() for e, m in zip(out.emb, out.mask))
                else:
                    outputs.append(out.float().cpu())
        finally:
            self.train(was_training)
        if self.config.head == "multi":
            return outputs
        return torch.cat(outputs) if outputs else torch.empty(0, 0)

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, out_dir: str | Path) -> None:
        """Writes config, heads and backbone (peft adapter in LoRA mode, full weights otherwise)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = SavedState(self.config, self.training_mode, self.freeze_vision,
                           self.lora.to_dict() if self.lora and self.is_peft else None)
        (out / CONFIG_FILE).write_text(json.dumps(asdict(state), indent=2) + "\n", encoding="utf-8")
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, str(out / HEADS_FILE))
        self.model.save_pretrained(out, safe_serialization=True)
        self.backbone.tokenizer.save_pretrained(out)
        self.backbone.image_processor.save_pretrained(out)

    @property
    def is_peft(self) -> bool:
        return self.model is not self.hf_model

    def merge_and_save(self, out_dir: str | Path, in_place: bool = False) -> None:
        """Merges LoRA weights into the backbone (peft ``merge_and_unload``) and saves a full checkpoint.

        ``in_place=False`` merges a copy and leaves this encoder's adapters untouched (twice the memory).
        """
        target = self if in_place else copy.deepcopy(self)
        if target.is_peft:
            target.model = target.model.merge_and_unload()
            target.training_mode = "full"
        target.save_pretrained(out_dir)

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


def load_backbone_weights(path: Path, adapter_cls: type[Backbone], training_mode: str,
                          **load_kwargs: Any) -> nn.Module:
    """The transformers model of ``path``; for a LoRA directory, its base with the adapters attached
    (trainable in ``lora`` mode, merged into the weights otherwise)."""
    is_adapter_dir = (path / CONFIG_FILE).exists() and (path / ADAPTER_FILE).exists()
    base_path = lora_base_path(path) if is_adapter_dir else path
    check_checkpoint_files(base_path, need_processor=False)
    model = adapter_cls.load_model(base_path, **load_kwargs)
    if not is_adapter_dir:
        return model
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, path, is_trainable=training_mode == "lora")
    return model if training_mode == "lora" else model.merge_and_unload()


def resolve_checkpoint(name: str | Path) -> Path:
    """A local checkpoint directory; a hub repo id is downloaded (config, safetensors, tokenizer and
    processor files only: never pickled weights) when the hub can be reached."""
    path = Path(name)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name), allow_patterns=HUB_PATTERNS))
    except Exception as err:  # offline, unknown repo, invalid id...
        raise FileNotFoundError(f"{name} is neither a checkpoint directory nor a reachable hub repository "
                                f"({type(err).__name__})") from err


HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.py"]


def build_head(config: EncoderConfig, hidden_size: int) -> nn.Module:
    """The head named by ``config.head``; checks the Matryoshka sizes against the output size."""
    if config.head == "multi":
        return MultiVectorHead(hidden_size, config.multi_dim)
    if config.head != "dense":
        raise ValueError(f"unknown head {config.head!r}; supported: dense, multi")
    head = DenseHead(hidden_size, config.pooling, config.projection_dim, config.normalize)
    dim = head.output_dim or hidden_size
    bad = [d for d in config.matryoshka_dims or [] if not 0 < d <= dim]
    if bad:
        raise ValueError(f"matryoshka_dims {bad} exceed the embedding size {dim}")
    return head


def same_head(a: EncoderConfig, b: EncoderConfig) -> bool:
    """Whether two configs define heads with the same parameters."""
    return (a.head, a.projection_dim, a.multi_dim) == (b.head, b.projection_dim, b.multi_dim)


def text_hidden_size(model: nn.Module) -> int:
    """Hidden size of the language model (the head's input size)."""
    config = unwrap(model).config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return text.hidden_size


def infer_backbone(path: Path, trust_remote_code: bool) -> str:
    """Backbone name from the checkpoint's ``config.json`` model_type."""
    check_checkpoint_files(path, need_processor=False, need_weights=False)
    model_type = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).model_type
    return backbone_for_model_type(model_type).name


def read_saved_state(path: Path) -> SavedState:
    """Parses ``retriever_config.json`` and checks the heads file is present."""
    if not (path / HEADS_FILE).exists():
        raise FileNotFoundError(f"{path / HEADS_FILE} is missing (the saved retrieval heads)")
    try:
        data = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        return SavedState(encoder=EncoderConfig.from_dict(data["encoder"]),
                          training_mode=data.get("training_mode", "full"),
                          freeze_vision=data.get("freeze_vision", False), lora=data.get("lora"))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path / CONFIG_FILE}: invalid retriever config: {err}") from err


def lora_base_path(path: Path) -> Path:
    """The base checkpoint an adapter directory was trained on (a directory or a hub repo id)."""
    base = json.loads((path / ADAPTER_FILE).read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path / ADAPTER_FILE}: base_model_name_or_path is empty")
    try:
        return resolve_checkpoint(base)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path / ADAPTER_FILE}: base model {base!r} (base_model_name_or_path): {err}") \
            from err


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def check_checkpoint_files(path: Path, need_weights: bool = True, need_processor: bool = True) -> None:
    """Raises FileNotFoundError naming the first missing file of a checkpoint directory."""
    required: list[tuple[str, ...]] = [("config.json",)] if need_weights or not need_processor else []
    if need_weights:
        required.append(WEIGHT_FILES)
    if need_processor:
        required += [("tokenizer_config.json",), TOKENIZER_FILES, IMAGE_PROCESSOR_FILES]
    for alternatives in required:
        if not any((path / name).exists() for name in alternatives):
            raise FileNotFoundError(f"{path}: missing {' or '.join(alternatives)}")


def load_image_processor(path: Path, trust_remote_code: bool = False) -> Any:
    """The checkpoint's image processor: ``AutoImageProcessor``, or its PIL-backend class by name.

    Some transformers 5 releases make ``AutoImageProcessor`` itself require torchvision; there the class named
    by ``preprocessor_config.json`` is loaded in its PIL variant (``<Name>Pil``) instead.
    """
    try:
        return AutoImageProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ImportError as err:
        config = path / "preprocessor_config.json"
        name = json.loads(config.read_text(encoding="utf-8")).get("image_processor_type", "") if config.exists() else ""
        pil_class = getattr(transformers, name.removesuffix("Fast").removesuffix("Pil") + "Pil", None)
        if pil_class is None:
            raise ImportError(f"{path}: cannot load the image processor {name!r} without torchvision") from err
        return pil_class.from_pretrained(path)


def decode_image(image: Image.Image | bytes, image_id: str) -> Image.Image:
    """An RGB PIL image; encoded bytes are decoded. Failures raise ValueError naming ``image_id``."""
    try:
        if isinstance(image, (bytes, bytearray, memoryview)):
            image = Image.open(io.BytesIO(bytes(image)))
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL image or encoded bytes, got {type(image).__name__}")
        image.load()
        return image.convert("RGB")
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for corrupt data
        raise ValueError(f"page {image_id}: cannot decode image: {err}") from err
