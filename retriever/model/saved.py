"""The checkpoint format, and the one loader every tool calls: :func:`load_encoder`.

A retriever directory (what :func:`save_encoder` and :func:`save_merged` write; safetensors only):

* ``retriever_config.json``: the :class:`~retriever.model.encoder.EncoderConfig` plus the training mode, the
  frozen-vision flag and the LoRA settings (:class:`SavedState`);
* ``heads.safetensors``: the retrieval head's weights;
* the backbone, as either a full transformers checkpoint (``config.json``, ``model*.safetensors``) or a peft
  adapter (``adapter_config.json``, ``adapter_model.safetensors``, whose ``base_model_name_or_path`` names the
  base checkpoint);
* the tokenizer and image-processor files.

:func:`load_encoder` takes such a directory, a published retriever checkpoint (ColPali / ColQwen / ColSmol / DSE in
colpali-engine's, transformers' or Tevatron's layout, merged or as a peft adapter; see
:mod:`retriever.model.published`), a plain transformers VLM checkpoint (fresh heads, built from ``settings``), or a
hub repo id where a hub is reachable (config, safetensors, tokenizer and processor files only: never pickled
weights). The training recipe, the evaluators, the miner, the merge tool and the MTEB wrapper
all load through it, so a new checkpoint format is taught here once.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

from data_prep.errors import InputError, MissingInputError, UserError, read_json_input
from data_prep.flags import positive_int

from .backbones import Backbone, backbone_for_model_type, get_backbone
from .compilation import COMPILE_CHOICES, compile_encoder
from .dtype import add_dtype_argument, default_dtype, torch_dtype
from .encoder import EncoderConfig, RetrieverEncoder, build_head, text_hidden_size
from .identity import ADAPTER_CONFIG, adapter_base, checkpoint_identity
from .published import detect_published, load_published_model, supported_formats
from .remote_code import refuses_remote_code
from .tensor_files import RESAVE, load_safetensors, readable_weights
from .training_modes import LoraSettings, apply_training_mode, unwrap

__all__ = ["ADAPTER_FILE", "CONFIG_FILE", "HEADS_FILE", "SavedState", "TRAINING_ARGS_FILE", "add_model_arguments",
           "check_checkpoint_files", "check_trained_dim", "checkpoint_inputs", "encoder_config", "infer_backbone", "is_saved_retriever",
           "load_encoder", "load_encoder_from_args", "load_image_processor", "read_saved_state", "resolve_checkpoint",
           "save_encoder", "save_merged", "saved_encoder_config"]

logger = logging.getLogger(__name__)
CONFIG_FILE = "retriever_config.json"
TRAINING_ARGS_FILE = "training_args.json"  # retriever.train's flags, written into OUTPUT_DIR/final
HEADS_FILE = "heads.safetensors"
ADAPTER_FILE = ADAPTER_CONFIG
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.py"]
# a training checkpoint (retriever.training.checkpoints) is trainer state, not a model: its marker and state file
CHECKPOINT_MARKER = "COMPLETE"
CHECKPOINT_STATE_FILE = "trainer_state.json"


class IncompleteCheckpointError(UserError, FileNotFoundError):
    """A training checkpoint directory whose save never finished (no ``COMPLETE`` marker)."""


@dataclass
class SavedState:
    """The contents of ``retriever_config.json``."""

    encoder: EncoderConfig
    training_mode: str = "full"
    freeze_vision: bool = False
    lora: dict | None = field(default=None)


@refuses_remote_code
def load_encoder(path_or_id: str | Path, config: EncoderConfig | None = None, *,
                 settings: Mapping[str, Any] | None = None, override: Mapping[str, Any] | None = None,
                 dtype: torch.dtype | str | None = None, device: torch.device | str | None = None,
                 training_mode: str = "full", lora: LoraSettings | None = None, freeze_vision: bool = False,
                 attn_implementation: str | None = None, trust_remote_code: bool = False) -> RetrieverEncoder:
    """A :class:`RetrieverEncoder` from a retriever directory, a transformers checkpoint or a hub id.

    The encoder settings are, in order of precedence: ``config`` if given; else the directory's saved config, or
    the settings a published checkpoint's format implies; else ``settings`` (EncoderConfig fields for fresh heads
    on a plain checkpoint; the backbone is inferred).
    ``override`` then replaces single fields whatever the source (e.g. ``{"head": "multi"}``). ``dtype`` is a
    torch dtype or a name of :mod:`retriever.model.dtype` (``auto``: the checkpoint's own). The encoder is
    returned in eval mode (as transformers does), on ``device`` when given; call ``.train()`` before training.
    """
    path = resolve_checkpoint(path_or_id)
    refuse_training_checkpoint(path)
    saved = read_saved_state(path) if is_saved_retriever(path) else None
    published = detect_published(path, resolve_checkpoint) if saved is None else None
    config = encoder_config(path, config, saved, published.settings if published else settings, override,
                            trust_remote_code)
    adapter_cls = get_backbone(config.backbone)
    if adapter_cls.requires_remote_code and not trust_remote_code:
        raise InputError(f"backbone {config.backbone!r} runs code from its checkpoint; pass "
                         "trust_remote_code=True (--trust_remote_code) if you trust it")
    files = published.files_dir if published else path
    check_checkpoint_files(files, need_weights=False)
    resume_lora = saved is not None and (path / ADAPTER_FILE).exists() and training_mode == "lora"
    load_kwargs = dict(dtype=torch_dtype(dtype), attn_implementation=attn_implementation)
    if published is not None:
        model, head_state = load_published_model(published, **load_kwargs)
    else:
        model = load_backbone_weights(path, adapter_cls, training_mode, trust_remote_code=trust_remote_code,
                                      **load_kwargs)
        head_state = (load_safetensors(path / HEADS_FILE, "the retrieval heads", RESAVE)
                      if saved is not None else None)
    tokenizer = AutoTokenizer.from_pretrained(files, trust_remote_code=trust_remote_code)
    backbone = adapter_cls(tokenizer, load_image_processor(files, trust_remote_code), unwrap(model).config)
    backbone.set_resolution(config.max_pixels, config.max_visual_tokens)
    backbone.set_input_format(config.input_format)
    backbone.bind(unwrap(model))
    if resume_lora:  # the adapters keep training; the rest stays frozen as peft left it
        lora = lora or (LoraSettings(**saved.lora) if saved.lora else None)
        if freeze_vision:
            backbone.vision_module(unwrap(model)).requires_grad_(False)
    else:
        model = apply_training_mode(model, backbone, training_mode, lora, freeze_vision)
    head = build_head(config, text_hidden_size(model)).to(unwrap(model).dtype)
    source = saved.encoder if saved is not None else \
        EncoderConfig.from_dict(published.settings) if published is not None and head_state else None
    if source is not None and same_head(config, source):
        head.load_state_dict(head_state)
    elif source is not None:
        logger.warning("%s: head settings differ from the checkpoint's; starting with fresh heads", path)
    encoder = RetrieverEncoder(config, backbone, model, head, training_mode, freeze_vision, lora,
                               checkpoint_identity(path))
    return (encoder.to(device) if device is not None else encoder).eval()


def saved_encoder_config(path_or_id: str | Path) -> EncoderConfig | None:
    """The encoder settings a retriever directory or published checkpoint carries (no weights are read); None for
    a plain VLM checkpoint, whose heads are chosen when it is loaded."""
    path = resolve_checkpoint(path_or_id)
    if is_saved_retriever(path):
        return read_saved_state(path).encoder
    published = detect_published(path, resolve_checkpoint)
    return EncoderConfig.from_dict(published.settings) if published is not None else None


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The checkpoint flags of the tools that use a trained retriever (evaluators, miner, query filter):
    ``--model``, ``--dtype``, ``--head`` and ``--trust_remote_code``; read back by :func:`load_encoder_from_args`."""
    parser.add_argument("--model", required=True,
                        help="retriever directory (e.g. OUTPUT_DIR/final), or a transformers VLM checkpoint (fresh "
                        "heads; see --head)")
    add_dtype_argument(parser, default_dtype(), "model weights dtype (default bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--head", choices=("dense", "multi"), default=None,
                        help="override the checkpoint's head (a fresh head on a plain transformers checkpoint)")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="allow code shipped with the checkpoint (MiniCPM-V only)")
    parser.add_argument("--compile", choices=COMPILE_CHOICES, default="none",
                        help="torch.compile the heads, or the heads and the backbone (all); falls back to eager "
                        "with one warning where it cannot compile")
    parser.add_argument("--dim", type=positive_int, default=None,
                        help="use the first DIM coordinates of every embedding, re-normalised (a Matryoshka size "
                        "the model was trained with; default: all)")


def load_encoder_from_args(args: argparse.Namespace, device: torch.device | str | None = None) -> RetrieverEncoder:
    """:func:`load_encoder` with the flags of :func:`add_model_arguments`, in eval mode on ``device``."""
    override = {"head": args.head} if args.head else {}
    if args.dim is not None:
        override["truncate_dim"] = args.dim
    try:
        encoder = load_encoder(args.model, override=override or None, dtype=args.dtype, device=device,
                               trust_remote_code=args.trust_remote_code)
    except ValueError as err:
        if args.dim is None or "truncate_dim" not in str(err):
            raise
        raise InputError(f"{args.model}: --dim {args.dim} is larger than its embeddings ({err})") from None
    check_trained_dim(args.dim, args.model, encoder.config.matryoshka_dims)
    compile_encoder(encoder, args.compile)
    return encoder


def check_trained_dim(dim: int | None, model: str, trained: list[int] | None) -> None:
    """``--dim`` must be a Matryoshka size the model was trained with (when it records them); without a record, a
    prefix of an untrained head may lose quality: a warning says so."""
    if dim is None:
        return
    if trained and dim not in trained:
        raise InputError(f"--dim {dim}: {model} was trained with the Matryoshka sizes {sorted(trained)}; give one "
                         "of them (or no --dim for the full size)")
    if not trained:
        logger.warning("--dim %d: %s records no Matryoshka sizes (--matryoshka_dims in training): the prefix of "
                       "embeddings trained without them may lose quality", dim, model)


def encoder_config(path: Path, config: EncoderConfig | None, saved: SavedState | None,
                   settings: Mapping[str, Any] | None, override: Mapping[str, Any] | None,
                   trust_remote_code: bool) -> EncoderConfig:
    """The encoder settings :func:`load_encoder` uses (see its precedence rules)."""
    if config is None and saved is not None:
        config = saved.encoder
    if config is None:
        settings = dict(settings or {})
        if "backbone" not in settings:
            settings["backbone"] = infer_backbone(path, trust_remote_code)
        config = EncoderConfig.from_dict(settings)
    return dataclasses.replace(config, **override) if override else config


def save_encoder(encoder: RetrieverEncoder, out_dir: str | Path) -> None:
    """Writes config, heads and backbone (peft adapter in LoRA mode, full weights otherwise) to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = SavedState(encoder.config, encoder.training_mode, encoder.freeze_vision,
                       encoder.lora.to_dict() if encoder.lora and encoder.is_peft else None)
    (out / CONFIG_FILE).write_text(json.dumps(asdict(state), indent=2) + "\n", encoding="utf-8")
    save_file({k: v.contiguous() for k, v in encoder.head.state_dict().items()}, str(out / HEADS_FILE))
    # LoRA never resizes the embeddings; peft's "auto" check would re-read the base's config.json, which a
    # published base (e.g. a ColQwen2Config) does not hold in the backbone's config class.
    extra = {"save_embedding_layers": False} if encoder.is_peft else {}
    encoder.model.save_pretrained(out, safe_serialization=True, **extra)
    encoder.backbone.tokenizer.save_pretrained(out)
    encoder.backbone.image_processor.save_pretrained(out)


def save_merged(encoder: RetrieverEncoder, out_dir: str | Path, in_place: bool = False) -> None:
    """Merges LoRA weights into the backbone (peft ``merge_and_unload``) and saves a full checkpoint.

    ``in_place=False`` merges a copy and leaves ``encoder``'s adapters untouched (twice the memory).
    """
    target = encoder if in_place else copy.deepcopy(encoder)
    if target.is_peft:
        target.model = target.model.merge_and_unload()
        target.training_mode = "full"
    save_encoder(target, out_dir)


def is_saved_retriever(path: Path) -> bool:
    """Whether ``path`` is a directory written by :func:`save_encoder` (rather than a plain VLM checkpoint)."""
    return (path / CONFIG_FILE).exists()


def load_backbone_weights(path: Path, adapter_cls: type[Backbone], training_mode: str,
                          trust_remote_code: bool = False, **load_kwargs: Any) -> nn.Module:
    """The transformers model of ``path``; for a LoRA directory, its base (a plain or a published checkpoint)
    with the adapters attached (trainable in ``lora`` mode, merged into the weights otherwise)."""
    is_adapter_dir = (path / CONFIG_FILE).exists() and (path / ADAPTER_FILE).exists()
    base_path = lora_base_path(path) if is_adapter_dir else path
    base_published = detect_published(base_path, resolve_checkpoint) if is_adapter_dir else None
    if base_published is not None:
        model = load_published_model(base_published, **load_kwargs)[0]
    else:
        check_checkpoint_files(base_path, need_processor=False)
        with readable_weights(base_path, "the weights", RESAVE):
            model = adapter_cls.load_model(base_path, trust_remote_code=trust_remote_code, **load_kwargs)
    if not is_adapter_dir:
        return model
    from peft import PeftModel

    with readable_weights(path, "the LoRA adapter", RESAVE):
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
        raise MissingInputError(f"{name} is neither a checkpoint directory nor a reachable hub repository "
                                f"({type(err).__name__})") from err


def refuse_training_checkpoint(path: Path) -> None:
    """A ``checkpoint-N`` directory of a training run holds trainer state, never a model to load: say so, and say
    whether it is incomplete (an interrupted save, which is never loaded as anything)."""
    if not (path / CHECKPOINT_STATE_FILE).exists() and not (path / "backend.pt").exists():
        return
    if not (path / CHECKPOINT_MARKER).exists():
        raise IncompleteCheckpointError(
            f"{path} is an incomplete training checkpoint (no {CHECKPOINT_MARKER} marker: its save was interrupted) "
            "and is never loaded; resume training with --resume_from_checkpoint latest, which skips it")
    raise InputError(f"{path} is a training checkpoint (optimizer state for --resume_from_checkpoint), not a model; "
                     f"load the run's final model ({path.parent / 'final'}) instead")


def same_head(a: EncoderConfig, b: EncoderConfig) -> bool:
    """Whether two configs define heads with the same parameters."""
    return (a.head, a.projection_dim, a.multi_dim) == (b.head, b.projection_dim, b.multi_dim)


def infer_backbone(path: Path, trust_remote_code: bool) -> str:
    """Backbone name from the checkpoint's ``config.json`` model_type; an unknown one lists what is supported."""
    check_checkpoint_files(path, need_processor=False, need_weights=False)
    model_type = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).model_type
    try:
        return backbone_for_model_type(model_type).name
    except ValueError as err:
        raise ValueError(f"{path / 'config.json'}: {err}; published retriever formats: {supported_formats()}") \
            from err


def read_saved_state(path: Path) -> SavedState:
    """Parses ``retriever_config.json`` and checks the heads file is present."""
    if not (path / HEADS_FILE).exists():
        raise MissingInputError(f"{path / HEADS_FILE} is missing (the saved retrieval heads)")
    try:
        data = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        return SavedState(encoder=EncoderConfig.from_dict(data["encoder"]),
                          training_mode=data.get("training_mode", "full"),
                          freeze_vision=data.get("freeze_vision", False), lora=data.get("lora"))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path / CONFIG_FILE}: invalid retriever config: {err}") from err


def lora_base_path(path: Path) -> Path:
    """The base checkpoint an adapter directory was trained on (a directory or a hub repo id)."""
    base = read_json_input(path / ADAPTER_FILE, "LoRA adapter config").get("base_model_name_or_path")
    if not base:
        raise InputError(f"{path / ADAPTER_FILE}: base_model_name_or_path is empty")
    try:
        return resolve_checkpoint(base)
    except FileNotFoundError as err:
        raise MissingInputError(f"{path / ADAPTER_FILE}: base model {base!r} (base_model_name_or_path): {err}") \
            from err


def checkpoint_inputs(flag: str, model: str | Path | None) -> dict[str, Path]:
    """The local directories loading ``model`` reads: the checkpoint and, for a LoRA run or adapter, its base model;
    as ``{flag: path}`` inputs of :func:`data_prep.outputs.check_outputs` (none for a hub id)."""
    if model is None or not Path(model).is_dir():
        return {}
    base = adapter_base(Path(model))
    return {flag: Path(model), **({f"{flag}'s base model": Path(base)} if base and Path(base).is_dir() else {})}


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
            raise MissingInputError(f"{path}: missing {' or '.join(alternatives)}")


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
