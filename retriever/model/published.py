"""Published retriever checkpoints (ColPali, ColQwen2, ColQwen2.5, ColSmol / ColIdefics3, DSE) as encoders.

:func:`detect_published` recognises a checkpoint directory from its files and returns a :class:`Published`
(its :class:`PublishedFormat`, the directory holding the weights, the peft adapter if any);
:func:`load_published_model` builds the backbone's transformers model from it, plus the retrieval head's weights.
:func:`~retriever.model.saved.load_encoder` calls both, so evaluation, mining, training and merging read a
published checkpoint through the same code path as our own.

Detection, in order: ``config.json`` ``architectures`` naming a published class (colpali-engine's ``ColQwen2``,
``ColQwen2_5``, ``ColQwen3``, ``BiQwen3``, ``ColQwen3_5``, ``BiQwen3_5``, ``ColGemma3``, ``BiGemma3``,
``ColModernVBert``, ``BiModernVBert``, ``ColPali``, ``ColIdefics3``;
transformers' ``ColQwen2ForRetrieval`` / ``ColPaliForRetrieval`` / ``ColModernVBertForRetrieval``, also found by
``model_type`` ``colqwen2`` / ``colpali`` / ``colmodernvbert``); for a peft adapter repository
(``adapter_config.json`` without our ``retriever_config.json``) the same test on the base model named by
``base_model_name_or_path`` (or the adapter's ``auto_mapping.base_model_class``); DSE: a Qwen2-VL checkpoint whose
model card (``README.md``) names DSE / Tevatron.  Other retrieval architectures (``Col*``, ``Bi*``,
``*ForRetrieval``) are errors that list the supported formats.

Loading: the family's transformers model is built from the config without random initialisation and filled
from the checkpoint's safetensors after the format's key renames (colpali-engine's and transformers' layouts to
``*ForConditionalGeneration``'s); a peft adapter's LoRA deltas (scaling ``lora_alpha / r``, or ``/ sqrt(r)``
with rsLoRA) and ``modules_to_save`` are merged into those weights, exactly as peft's merge does, so the result
is an ordinary full model that our own LoRA can train on top of.  Unexpected or missing weights (other than
the unused, tied LM head) are errors, as is a projection whose size disagrees with the config.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from data_prep.errors import InputError, read_json_input

from .backbones import get_backbone
from .backbones.qwen_vl import COLQWEN_PAGE
from .dtype import config_dtype
from .tensor_files import RESAVE, load_safetensors

__all__ = ["DEFAULT_DIM", "FORMATS", "KeyRename", "Published", "PublishedFormat", "detect_published",
           "load_published_model", "page_prompt_of", "published_key", "supported_formats", "visual_prompt_prefix"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class KeyRename(NamedTuple):
    """A weight-name prefix in a published layout and in ours (``*ForConditionalGeneration``'s). A format's table
    is read both ways: loading renames a key by its longest matching ``published`` prefix (any row), export by its
    longest matching ``ours`` prefix among the current rows (``legacy`` rows are older layouts, read only)."""

    published: str
    ours: str
    legacy: bool = False


def _legacy(*pairs: tuple[str, str]) -> tuple[KeyRename, ...]:
    return tuple(KeyRename(a, b, True) for a, b in pairs)


# colpali-engine's ColQwen2 / ColQwen2.5 / ColQwen3.5 / BiQwen3.5 (``*Model`` subclasses saving bare names; older
# ColQwen2 saves used the text model's bare names),
# and Qwen2-VL's own original layout (``model.layers``, ``visual``), which DSE checkpoints hold.
COLQWEN_ENGINE_RENAMES = (
    KeyRename("visual.", "model.visual."), KeyRename("language_model.", "model.language_model."),
    *_legacy(("base_model.model.custom_text_proj.", "custom_text_proj."),
             ("model.layers.", "model.language_model.layers."),
             ("model.embed_tokens.", "model.language_model.embed_tokens."),
             ("model.norm.", "model.language_model.norm.")),
)
# colpali-engine's ColQwen3 / BiQwen3 (``Qwen3VLModel`` subclasses whose transformers conversion mapping saves every
# weight, ColQwen3's projection included, under ``model.``; the bare names load too).
QWEN3_ENGINE_RENAMES = (
    KeyRename("model.custom_text_proj.", "custom_text_proj."), KeyRename("model.", "model."),
    *_legacy(("base_model.model.custom_text_proj.", "custom_text_proj."), ("custom_text_proj.", "custom_text_proj."),
             ("visual.", "model.visual."), ("language_model.", "model.language_model.")),
)
# transformers' ColModernVBertForRetrieval (``vlm`` is the ModernVBertModel, which our encoder holds itself).
TRANSFORMERS_COLMODERNVBERT_RENAMES = (KeyRename("vlm.", ""),
                                       KeyRename("embedding_proj_layer.", "embedding_proj_layer."))
# colpali-engine's ColModernVBert / BiModernVBert (the ModernVBertModel under ``model``). Their conversion mapping,
# applied in reverse on save, writes the text model and projection under peft's ``base_model.model.`` prefix.
ENGINE_MODERNVBERT_RENAMES = (
    KeyRename("model.", ""), KeyRename("base_model.model.model.text_model.", "text_model."),
    KeyRename("base_model.model.custom_text_proj.", "custom_text_proj."),
    *_legacy(("model.text_model.", "text_model."), ("custom_text_proj.", "custom_text_proj.")),
)
# What both ColModernVBERT processors do with queries and pages.
MODERNVBERT_QUERY = {"query_prefix": "", "query_augmentation_tokens": 10,
                     "query_augmentation_token": "<end_of_utterance>", "page_prompt": "Describe the image."}
# colpali-engine's ColGemma3 (a ``Gemma3Model`` subclass).
GEMMA3_ENGINE_RENAMES = (
    KeyRename("vision_tower.", "model.vision_tower."),
    KeyRename("multi_modal_projector.", "model.multi_modal_projector."),
    KeyRename("language_model.", "model.language_model."),
    *_legacy(("base_model.model.custom_text_proj.", "custom_text_proj."),
             ("model.custom_text_proj.", "custom_text_proj."), ("model.", "model.")),
)
# colpali-engine's ColPali (a PaliGemmaForConditionalGeneration under ``model``; older saves nest the LM further).
COLPALI_ENGINE_RENAMES = (
    KeyRename("model.language_model.model.", "model.language_model."),
    *_legacy(("base_model.model.custom_text_proj.", "custom_text_proj."),
             ("model.language_model.lm_head.", "lm_head."), ("model.lm_head.", "lm_head."), ("model.model.", "model.")),
)
# transformers' Col*ForRetrieval (``vlm`` is the *Model; older saves hold a *ForConditionalGeneration); the
# PaliGemma one keeps Gemma's ``language_model.model`` nesting on disk.
_TRANSFORMERS_LEGACY = _legacy(("vlm.language_model.lm_head.", "lm_head."), ("vlm.lm_head.", "lm_head."),
                               ("vlm.model.", "model."))
TRANSFORMERS_COLQWEN2_RENAMES = (
    KeyRename("vlm.", "model."),
    *_legacy(("vlm.language_model.model.", "model.language_model.")), *_TRANSFORMERS_LEGACY,
)
TRANSFORMERS_COLPALI_RENAMES = (
    KeyRename("vlm.language_model.model.", "model.language_model."), KeyRename("vlm.", "model."),
    *_TRANSFORMERS_LEGACY,
)
# colpali-engine's Col* classes fix their projection size in code; transformers' read ``embedding_dim`` (default).
DEFAULT_DIM = 128
COLPALI_QUERY = {"head": "multi", "query_prefix": "", "query_augmentation_tokens": 10,
                 "page_prompt": "Describe the image.", "input_format": "colpali_engine"}


@dataclass(frozen=True)
class PublishedFormat:
    """One published checkpoint family: how it is recognised, loaded and fed.

    ``settings``: the EncoderConfig fields its reference processor implies; ``head_key``: the module name of its
    multi-vector projection (None: a dense model without one); ``dim_field``: the config field the projection's
    output size must equal (None: fixed in the reference class: ``settings["multi_dim"]``, else
    :data:`DEFAULT_DIM`); ``nested_config``: the config field holding the VLM's config (transformers' -hf repos);
    ``page_prompt_layout``: what the processor's ``visual_prompt_prefix`` holds around the page prompt (transformers'
    ColQwen2 processor keeps the whole page turn there, its ColPali processor only the prompt).
    """

    name: str
    library: str
    backbone: str
    architectures: tuple[str, ...]
    settings: Mapping[str, Any]
    renames: tuple[KeyRename, ...] = ()
    head_key: str | None = None
    dim_field: str | None = None
    nested_config: str | None = None
    model_types: tuple[str, ...] = ()
    page_prompt_layout: str = "{prompt}"


FORMATS: tuple[PublishedFormat, ...] = (
    PublishedFormat("ColQwen2", "colpali-engine", "qwen2_vl", ("ColQwen2",),
                    {**COLPALI_QUERY, "query_augmentation_token": "<|endoftext|>", "padding_side": "left"},
                    COLQWEN_ENGINE_RENAMES, "custom_text_proj"),
    PublishedFormat("ColQwen2.5", "colpali-engine", "qwen2_5_vl", ("ColQwen2_5",),
                    {**COLPALI_QUERY, "query_augmentation_token": "<|endoftext|>", "padding_side": "left"},
                    COLQWEN_ENGINE_RENAMES, "custom_text_proj"),
    PublishedFormat("ColQwen3", "colpali-engine", "qwen3_vl", ("ColQwen3",),
                    {**COLPALI_QUERY, "query_augmentation_token": "<|endoftext|>", "padding_side": "left",
                     "multi_dim": 320}, QWEN3_ENGINE_RENAMES, "custom_text_proj"),
    PublishedFormat("BiQwen3", "colpali-engine", "qwen3_vl", ("BiQwen3",),
                    {**COLPALI_QUERY, "head": "dense", "pooling": "last", "normalize": True,
                     "query_augmentation_token": "<|endoftext|>", "padding_side": "left"}, QWEN3_ENGINE_RENAMES),
    PublishedFormat("ColQwen3.5", "colpali-engine", "qwen3_5", ("ColQwen3_5",),
                    {**COLPALI_QUERY, "query_augmentation_token": "<|endoftext|>", "padding_side": "left"},
                    COLQWEN_ENGINE_RENAMES, "custom_text_proj", "dim"),
    PublishedFormat("BiQwen3.5", "colpali-engine", "qwen3_5", ("BiQwen3_5",),
                    {**COLPALI_QUERY, "head": "dense", "pooling": "last", "normalize": True,
                     "query_augmentation_token": "<|endoftext|>", "padding_side": "left"}, COLQWEN_ENGINE_RENAMES),
    PublishedFormat("ColGemma3", "colpali-engine", "gemma3", ("ColGemma3",),
                    {"head": "multi", "query_prefix": "Query: ", "query_augmentation_tokens": 0,
                     "page_prompt": "Describe this image", "input_format": "colpali_engine", "padding_side": "left"},
                    GEMMA3_ENGINE_RENAMES, "custom_text_proj"),
    # BiGemma3's processor: the query and the base class's 10 x <eos> in ColGemma3's "Query: " chat turn.
    PublishedFormat("BiGemma3", "colpali-engine", "gemma3", ("BiGemma3",),
                    {"head": "dense", "pooling": "last", "normalize": True, "query_prefix": "Query: ",
                     "query_augmentation_tokens": 10, "query_augmentation_token": "<eos>",
                     "page_prompt": "Describe this image", "input_format": "colpali_engine", "padding_side": "left"},
                    GEMMA3_ENGINE_RENAMES),
    PublishedFormat("ColModernVBert", "colpali-engine", "modernvbert", ("ColModernVBert",),
                    {**MODERNVBERT_QUERY, "head": "multi", "input_format": "colpali_engine", "padding_side": "left"},
                    ENGINE_MODERNVBERT_RENAMES, "custom_text_proj"),
    PublishedFormat("BiModernVBert", "colpali-engine", "modernvbert", ("BiModernVBert",),
                    {**MODERNVBERT_QUERY, "head": "dense", "pooling": "mean", "normalize": True,
                     "input_format": "colpali_engine", "padding_side": "left"}, ENGINE_MODERNVBERT_RENAMES),
    PublishedFormat("ColPali", "colpali-engine", "paligemma", ("ColPali",), COLPALI_QUERY,
                    COLPALI_ENGINE_RENAMES, "custom_text_proj"),
    PublishedFormat("ColIdefics3 / ColSmol", "colpali-engine", "idefics3", ("ColIdefics3",),
                    {**COLPALI_QUERY, "query_augmentation_token": "<end_of_utterance>", "padding_side": "left"},
                    (), "linear"),
    PublishedFormat("ColQwen2ForRetrieval", "transformers", "qwen2_vl", ("ColQwen2ForRetrieval",),
                    {**COLPALI_QUERY, "query_prefix": "Query: ", "input_format": "transformers"},
                    TRANSFORMERS_COLQWEN2_RENAMES, "embedding_proj_layer", "embedding_dim", "vlm_config",
                    ("colqwen2",), COLQWEN_PAGE.replace("{image}", "<|image_pad|>").replace("{text}", "{prompt}")),
    PublishedFormat("ColModernVBertForRetrieval", "transformers", "modernvbert", ("ColModernVBertForRetrieval",),
                    {**MODERNVBERT_QUERY, "head": "multi", "input_format": "transformers"},
                    TRANSFORMERS_COLMODERNVBERT_RENAMES, "embedding_proj_layer", "embedding_dim", "vlm_config",
                    ("colmodernvbert",), "<|begin_of_text|>User:<image>{prompt}<end_of_utterance>\nAssistant:"),
    PublishedFormat("ColPaliForRetrieval", "transformers", "paligemma", ("ColPaliForRetrieval",),
                    {**COLPALI_QUERY, "query_prefix": "Question: ", "input_format": "transformers"},
                    TRANSFORMERS_COLPALI_RENAMES, "embedding_proj_layer", "embedding_dim", "vlm_config",
                    ("colpali",)),
    PublishedFormat("DSE", "Tevatron", "qwen2_vl", ("Qwen2VLForConditionalGeneration",),
                    {"head": "dense", "pooling": "last", "normalize": True, "query_prefix": "Query: ",
                     "page_prompt": "What is shown in this image?", "padding_side": "left", "input_format": "dse"},
                    COLQWEN_ENGINE_RENAMES),
)
DSE_CARD = re.compile(r"\bDSE\b|Tevatron|[Dd]ocument [Ss]creenshot [Ee]mbedding")
RETRIEVAL_ARCHITECTURE = re.compile(r"^(Col|Bi)[A-Z]|ForRetrieval$")


@dataclass(frozen=True)
class Published:
    """A detected published checkpoint: ``weights_dir`` holds config and weights (the base for an adapter)."""

    format: PublishedFormat
    path: Path
    weights_dir: Path
    config: dict = field(repr=False)
    adapter: Path | None = None

    @property
    def settings(self) -> dict[str, Any]:
        """EncoderConfig fields: the format's, with the prompts a transformers processor config overrides."""
        settings = {"backbone": self.format.backbone, **self.format.settings}
        if self.format.head_key is not None:
            settings["multi_dim"] = self.multi_dim
        path = self.path / "processor_config.json"
        processor = _read_json(path) if self.format.nested_config else {}
        if processor.get("query_prefix"):
            settings["query_prefix"] = processor["query_prefix"]
        if processor.get("visual_prompt_prefix"):
            settings["page_prompt"] = page_prompt_of(self.format, processor["visual_prompt_prefix"], path)
        return settings

    @property
    def multi_dim(self) -> int:
        """The projection size the config (or the reference class) declares."""
        fixed = int(self.format.settings.get("multi_dim", DEFAULT_DIM))  # colpali-engine: set in the class's code
        return int(self.config.get(self.format.dim_field, fixed)) if self.format.dim_field else fixed

    @property
    def files_dir(self) -> Path:
        """Where the tokenizer and image processor are: the checkpoint, else (adapter repos) its base."""
        return self.path if (self.path / "tokenizer_config.json").exists() else self.weights_dir


def supported_formats() -> str:
    """The published formats, for error messages."""
    return ", ".join(f"{f.library} {f.name}" for f in FORMATS)


def detect_published(path: Path, resolve: Any) -> Published | None:
    """The published format of the checkpoint at ``path`` (None: a plain VLM checkpoint).

    ``resolve`` turns an adapter's base name into a local directory (raising FileNotFoundError naming it).
    """
    adapter = path if (path / ADAPTER_CONFIG).exists() else None
    weights_dir = path
    if adapter is not None:
        adapter_config = _read_json(path / ADAPTER_CONFIG)
        base = adapter_config.get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{path / ADAPTER_CONFIG}: base_model_name_or_path is empty; set it to the base model")
        try:
            weights_dir = resolve(base)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{path / ADAPTER_CONFIG}: base model {base!r} (base_model_name_or_path) "
                                    f"cannot be found: {err}") from err
    config = _read_json(weights_dir / "config.json")
    fmt = _match(config, weights_dir, path)
    if fmt is None and adapter is not None:
        base_class = (_read_json(path / ADAPTER_CONFIG).get("auto_mapping") or {}).get("base_model_class")
        fmt = _match({"architectures": [base_class]}, weights_dir, path) if base_class else None
    return Published(fmt, path, weights_dir, config, adapter) if fmt is not None else None


def _match(config: Mapping[str, Any], weights_dir: Path, path: Path) -> PublishedFormat | None:
    architectures = config.get("architectures") or []
    for fmt in FORMATS:
        named = set(architectures) & set(fmt.architectures) or config.get("model_type") in fmt.model_types
        if named and (fmt.name != "DSE" or _is_dse_card(path) or _is_dse_card(weights_dir)):
            return fmt
    unknown = [a for a in architectures if RETRIEVAL_ARCHITECTURE.search(a)]
    if unknown:
        raise ValueError(f"{weights_dir / 'config.json'}: architecture {unknown[0]!r} is not a supported "
                         f"retriever format; supported: {supported_formats()}, or a plain VLM checkpoint")
    return None


def _is_dse_card(path: Path) -> bool:
    card = path / "README.md"
    return card.exists() and bool(DSE_CARD.search(card.read_text(encoding="utf-8", errors="replace")))


def page_prompt_of(fmt: PublishedFormat, visual_prompt_prefix: str, path: Path) -> str:
    """The page prompt inside a processor's ``visual_prompt_prefix`` laid out as ``fmt.page_prompt_layout``; a value
    in another layout is an error naming ``path`` (read as a prompt, it would silently change every page)."""
    before, after = fmt.page_prompt_layout.split("{prompt}")
    if not (visual_prompt_prefix.startswith(before) and visual_prompt_prefix.endswith(after)
            and len(visual_prompt_prefix) >= len(before) + len(after)):
        raise InputError(f"{path}: visual_prompt_prefix {visual_prompt_prefix!r} is not laid out as {fmt.name}'s "
                         f"processor lays out pages ({fmt.page_prompt_layout!r}, with the prompt at {{prompt}})")
    return visual_prompt_prefix[len(before):len(visual_prompt_prefix) - len(after)]


def visual_prompt_prefix(fmt: PublishedFormat, page_prompt: str) -> str:
    """What ``fmt``'s processor keeps as ``visual_prompt_prefix`` for ``page_prompt`` (the inverse of
    :func:`page_prompt_of`)."""
    return fmt.page_prompt_layout.replace("{prompt}", page_prompt)


def load_published_model(published: Published, **load_kwargs: Any) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The backbone's ``*ForConditionalGeneration`` with the checkpoint's (adapter-merged) weights, and the
    head's state dict (``projection.weight`` / ``.bias``; empty for a dense format)."""
    from transformers import AutoConfig
    from transformers.initialization import no_init_weights

    fmt = published.format
    saved = config = AutoConfig.from_pretrained(published.weights_dir, trust_remote_code=False)  # known formats only
    if fmt.nested_config:
        config = getattr(config, fmt.nested_config)
    state = _renamed(_read_weights(published.weights_dir), fmt.renames)
    if published.adapter is not None:
        _merge_adapter(state, published.adapter, fmt.renames)
    head = _take_head(state, published, config.get_text_config().hidden_size)
    kwargs = {k: v for k, v in load_kwargs.items() if v is not None}
    dtype = config_dtype(kwargs.pop("dtype", None), saved, config)  # "auto": the dtype the checkpoint records
    if dtype is not None:
        kwargs["dtype"] = dtype
    with no_init_weights():
        model = get_backbone(fmt.backbone).auto_class().from_config(config, **kwargs)
    _load_body(model, state, published.weights_dir)
    model.config._name_or_path = str(published.path)  # what a peft adapter trained on top records as its base
    return model.eval(), head


def _take_head(state: dict[str, torch.Tensor], published: Published, hidden: int) -> dict[str, torch.Tensor]:
    """Removes the projection's weights from ``state`` and checks their shape against the config."""
    fmt = published.format
    if fmt.head_key is None:
        return {}
    prefix = fmt.head_key + "."
    head = {"projection." + k[len(prefix):]: state.pop(k) for k in list(state) if k.startswith(prefix)}
    where = published.weights_dir / "model.safetensors"
    if "projection.weight" not in head:
        raise ValueError(f"{where}: no {prefix}weight (the {fmt.name} projection); is this a {fmt.name} checkpoint?")
    rows, cols = head["projection.weight"].shape
    if cols != hidden:
        raise ValueError(f"{where}: {prefix}weight has input size {cols}, but the config's text hidden_size is "
                         f"{hidden}; the checkpoint and its config.json disagree")
    if rows != published.multi_dim:
        declared = f"config.json {fmt.dim_field}" if fmt.dim_field else f"{fmt.library}'s {fmt.name} class"
        raise ValueError(f"{where}: {prefix}weight has {rows} outputs, but {declared} says {published.multi_dim}; "
                         "the checkpoint and its config disagree")
    return head


def _load_body(model: nn.Module, state: dict[str, torch.Tensor], weights_dir: Path) -> None:
    """Loads ``state`` into ``model``; only a tied or unused LM head may be missing (it is zeroed)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"{weights_dir}: weights the model does not have: {sorted(unexpected)[:5]} "
                         f"({len(unexpected)} in all); the checkpoint does not match its format")
    missing = [k for k in missing if not k.startswith("lm_head.")]
    if missing:
        raise ValueError(f"{weights_dir}: weights missing from the checkpoint: {sorted(missing)[:5]} "
                         f"({len(missing)} in all)")
    head = model.get_output_embeddings()  # None for an encoder (ModernVBERT)
    tied = head is None or head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    if "lm_head.weight" not in state and not tied:
        with torch.no_grad():
            model.lm_head.weight.zero_()  # not in the checkpoint; retrieval never runs the LM head


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors checkpoint."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(_read_json(index)["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_safetensors(directory / shard, "the weights", RESAVE))
        return state
    if not (directory / "model.safetensors").exists():
        raise FileNotFoundError(f"{directory}: missing model.safetensors or model.safetensors.index.json "
                                "(published checkpoints are read from safetensors only)")
    return load_safetensors(directory / "model.safetensors", "the weights", RESAVE)


def _renamed(state: dict[str, torch.Tensor], renames: tuple[KeyRename, ...]) -> dict[str, torch.Tensor]:
    return {_rename(k, renames): v for k, v in state.items()}


def _rename(key: str, renames: tuple[KeyRename, ...]) -> str:
    """``key`` (published layout) in ours: its longest matching ``published`` prefix replaced."""
    matches = [r for r in renames if key.startswith(r.published)]
    best = max(matches, key=lambda r: len(r.published), default=None)
    return best.ours + key[len(best.published):] if best else key


def published_key(key: str, renames: tuple[KeyRename, ...]) -> str:
    """``key`` (our layout) in the published one: its longest matching ``ours`` prefix of a current row replaced."""
    matches = [r for r in renames if not r.legacy and key.startswith(r.ours)]
    best = max(matches, key=lambda r: len(r.ours), default=None)
    return best.published + key[len(best.ours):] if best else key


def _merge_adapter(state: dict[str, torch.Tensor], adapter: Path, renames: tuple[KeyRename, ...]) -> None:
    """Adds a peft LoRA adapter's ``B @ A * scaling`` to ``state``'s weights and copies its ``modules_to_save``."""
    config_path = adapter / ADAPTER_CONFIG
    config = _read_json(config_path)
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora") or config.get("rank_pattern") \
            or config.get("alpha_pattern"):
        raise ValueError(f"{config_path}: only plain LoRA adapters are supported (no DoRA, rank or alpha patterns)")
    rank = config["r"]
    scaling = config["lora_alpha"] / (rank ** 0.5 if config.get("use_rslora") else rank)
    if not (adapter / ADAPTER_WEIGHTS).exists():
        raise FileNotFoundError(f"{adapter / ADAPTER_WEIGHTS} is missing (adapters are read from safetensors only)")
    weights = load_safetensors(adapter / ADAPTER_WEIGHTS, "the LoRA adapter", RESAVE)
    for key, tensor in weights.items():
        name = key.removeprefix("base_model.model.").replace(".modules_to_save.default", "")
        if ".lora_B." in name:
            continue
        if ".lora_A." in name:
            module = name.split(".lora_A.")[0]
            target = _rename(module + ".weight", renames)
            if target not in state:
                raise ValueError(f"{adapter / ADAPTER_WEIGHTS}: {key} adapts {target!r}, which the base lacks")
            lora_b = weights[key.replace(".lora_A.", ".lora_B.")]
            delta = (lora_b.double() @ tensor.double()) * scaling
            state[target] = (state[target].double() + delta).to(state[target].dtype)
        elif "lora_" in name:
            raise ValueError(f"{adapter / ADAPTER_WEIGHTS}: unsupported adapter weight {key!r}")
        else:
            state[_rename(name, renames)] = tensor


def _read_json(path: Path) -> dict:
    """A checkpoint's JSON file ({} when absent; not JSON or not UTF-8: one-line InputError naming it)."""
    return read_json_input(path, "checkpoint file") if path.exists() else {}
