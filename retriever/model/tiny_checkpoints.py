"""Tiny random-weight checkpoints for every supported architecture, built fully offline.

Design: each architecture gets a builder that assembles the *real* transformers classes
(``<Arch>Config`` -> the family adapter's Auto class, ``AutoModelForImageTextToText`` but for ModernVBERT's
``AutoModel``; the PIL-backend image processor, the model's
processor class) at toy sizes, plus a byte-level BPE tokenizer built with the ``tokenizers`` library
that contains the architecture's special and image tokens.  Everything is written with
``save_pretrained``, so the output directory has the same file layout as a hub checkpoint and is
loaded by exactly the same code path (``--model_name_or_path DIR``).

Sizes are chosen so that a forward pass of a 2-page batch takes well under a second on one CPU core:
hidden size 64, 2 text layers, 1-2 vision layers, 14 px patches and images of a few patches.

Used by the tests' ``tiny_model_dir`` fixture, the benchmarks and the CLI ``python -m retriever.tiny --arch qwen2_vl
--out /tmp/tiny_qwen2_vl`` (:mod:`retriever.tiny`).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedConfig, PreTrainedTokenizerFast

from .backbones import backbone_for_model_type

TEXT_HIDDEN = 64
TEXT_HEADS = 4
TEXT_LAYERS = 2
VISION_HIDDEN = 32
PATCH = 14
QWEN3_PATCH = 16  # Qwen3-VL's and Qwen3.5's patch size
# Larger than the usual 0.02 so that attention is far from uniform: tests of positions, masks and padding
# then see clear differences when something is wrong.
INIT_STD = 0.2


def byte_level_tokenizer(
    special_tokens: list[str], *, bos: str | None, eos: str, pad: str, unk: str | None = None,
    extra_special_tokens: dict[str, str] | None = None, add_bos: bool = False,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (256 byte symbols, no merges) with the given special tokens.

    Byte-level symbols make every string encodable without an unknown token; special tokens are added
    as atomic added tokens, so the processors' image placeholders map to single ids as in real models.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(special_tokens)
    if add_bos and bos is not None:
        from tokenizers.processors import TemplateProcessing

        backend.post_processor = TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, backend.token_to_id(bos))]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk,
        extra_special_tokens=extra_special_tokens or {},
    )
    return tokenizer


def vocab_size_for(tokenizer: PreTrainedTokenizerFast) -> int:
    """Embedding rows: the tokenizer length rounded up to a multiple of 64."""
    return -(-len(tokenizer) // 64) * 64


def text_kwargs(tokenizer: PreTrainedTokenizerFast, dropout: float) -> dict:
    """Text-model sizes shared by all Llama/Qwen/Gemma style decoders."""
    return dict(
        vocab_size=vocab_size_for(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=2 * TEXT_HIDDEN,
        num_hidden_layers=TEXT_LAYERS, num_attention_heads=TEXT_HEADS, num_key_value_heads=2,
        max_position_embeddings=1024, attention_dropout=dropout, initializer_range=INIT_STD,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


# ---------------------------------------------------------------- Qwen2-VL / Qwen2.5-VL
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _build_qwen(arch: str, out: Path, dropout: float) -> None:
    from transformers import Qwen2VLImageProcessorPil

    tokenizer = byte_level_tokenizer(QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>")
    ids = tokenizer.convert_tokens_to_ids
    text = text_kwargs(tokenizer, dropout) | {
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}}
    common = dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                  vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
                  tie_word_embeddings=True)
    if arch == "qwen2_vl":
        from transformers import Qwen2VLConfig

        vision = dict(depth=2, embed_dim=VISION_HIDDEN, hidden_size=TEXT_HIDDEN, num_heads=2, mlp_ratio=2,
                      patch_size=PATCH, spatial_merge_size=2, temporal_patch_size=2, initializer_range=INIT_STD)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, **common)
    elif arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        vision = dict(depth=2, hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN, num_heads=2,
                      out_hidden_size=TEXT_HIDDEN, patch_size=PATCH, spatial_merge_size=2,
                      temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
                      initializer_range=INIT_STD)
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
    else:
        config = _qwen3_config(arch, text, common)
    patch = QWEN3_PATCH if arch in ("qwen3_vl", "qwen3_5") else PATCH
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": (4 * patch) ** 2, "longest_edge": (8 * patch) ** 2}, patch_size=patch,
        temporal_patch_size=2, merge_size=2)
    _save(config, tokenizer, image_processor, QWEN_CHAT_TEMPLATE, out)


def _qwen3_config(arch: str, text: dict, common: dict) -> PreTrainedConfig:
    """Qwen3-VL: a Qwen3 text model (q/k norms, explicit head_dim, interleaved M-RoPE) and a ViT of 16 px patches
    with learned position embeddings and one DeepStack merger (after the first block). Qwen3.5: the same ViT
    without DeepStack, and a text model whose first layer is a Gated DeltaNet (linear attention) and second full
    attention, as the real models interleave them."""
    from transformers import Qwen3_5Config, Qwen3VLConfig

    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True}
    text = text | {"head_dim": TEXT_HIDDEN // TEXT_HEADS, "rope_parameters": rope}
    vision = dict(depth=2, hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN, num_heads=2,
                  out_hidden_size=TEXT_HIDDEN, patch_size=QWEN3_PATCH, spatial_merge_size=2, temporal_patch_size=2,
                  num_position_embeddings=64, initializer_range=INIT_STD)
    if arch == "qwen3_vl":
        return Qwen3VLConfig(text_config=text, vision_config=vision | {"deepstack_visual_indexes": [0]}, **common)
    text["rope_parameters"] = rope | {"partial_rotary_factor": 1.0}
    linear = dict(layer_types=["linear_attention", "full_attention"], linear_conv_kernel_dim=4,
                  linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4)
    return Qwen3_5Config(text_config=text | linear, vision_config=vision, **common)


# ---------------------------------------------------------------- InternVL (InternViT + Qwen2 LM; 3.5: Qwen3 LM)
INTERNVL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _build_internvl(arch: str, out: Path, dropout: float) -> None:
    from transformers import GotOcr2ImageProcessorPil, InternVLConfig

    tokenizer = byte_level_tokenizer(
        INTERNVL_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>",
        extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                              "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    text = text_kwargs(tokenizer, dropout) | {"model_type": "qwen2", "rope_theta": 10000.0}
    if arch == "internvl3_5":  # InternVL3.5's transformers layout: InternViT + a Qwen3 text model (q/k norms)
        text = text | {"model_type": "qwen3", "head_dim": TEXT_HIDDEN // TEXT_HEADS}
    vision = dict(hidden_size=VISION_HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=2 * VISION_HIDDEN, image_size=[56, 56], patch_size=[PATCH, PATCH],
                  attention_dropout=dropout, projection_dropout=dropout, hidden_dropout_prob=dropout,
                  initializer_range=INIT_STD)
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(
        "<IMG_CONTEXT>"), image_seq_length=4, downsample_ratio=0.5, tie_word_embeddings=True)
    image_processor = GotOcr2ImageProcessorPil(size={"height": 56, "width": 56}, crop_to_patches=True,
                                               min_patches=1, max_patches=4)
    _save(config, tokenizer, image_processor, INTERNVL_CHAT_TEMPLATE, out)


# ---------------------------------------------------------------- Idefics3 (SigLIP + Llama LM)
IDEFICS3_SPECIALS = (["<|begin_of_text|>", "<|end_of_text|>", "<pad>", "<fake_token_around_image>", "<image>",
                      "<global-img>", "<end_of_utterance>"]
                     + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)])
IDEFICS3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def _build_idefics3(arch: str, out: Path, dropout: float) -> None:
    from transformers import Idefics3Config, Idefics3ImageProcessorPil

    tokenizer = byte_level_tokenizer(IDEFICS3_SPECIALS, bos="<|begin_of_text|>", eos="<end_of_utterance>",
                                     pad="<pad>")
    text = text_kwargs(tokenizer, dropout) | {"model_type": "llama", "rope_theta": 10000.0}
    vision = dict(hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN, num_hidden_layers=2,
                  num_attention_heads=2, image_size=28, patch_size=PATCH, attention_dropout=dropout,
                  initializer_range=INIT_STD)
    if arch == "modernvbert":
        config = _modernvbert_config(tokenizer, dropout, vision)
    else:
        config = Idefics3Config(vision_config=vision, text_config=text, scale_factor=2,
                                image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                                pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 56}, max_image_size={"longest_edge": 28},
                                                do_image_splitting=True)
    _save(config, tokenizer, image_processor, IDEFICS3_CHAT_TEMPLATE, out)


def _modernvbert_config(tokenizer: PreTrainedTokenizerFast, dropout: float, vision: dict) -> PreTrainedConfig:
    """ModernVBERT: Idefics3's SigLIP, connector and inputs around a bidirectional ModernBERT text encoder (a local
    attention layer, then global)."""
    from transformers import ModernVBertConfig

    text = dict(model_type="modernbert", vocab_size=vocab_size_for(tokenizer), hidden_size=TEXT_HIDDEN,
                intermediate_size=2 * TEXT_HIDDEN, num_hidden_layers=TEXT_LAYERS, num_attention_heads=TEXT_HEADS,
                global_attn_every_n_layers=2, local_attention=16, attention_dropout=dropout,
                max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                cls_token_id=tokenizer.bos_token_id, sep_token_id=tokenizer.eos_token_id, initializer_range=INIT_STD)
    return ModernVBertConfig(text_config=text, vision_config=vision | {"model_type": "siglip_vision_model"},
                             image_token_id=tokenizer.convert_tokens_to_ids("<image>"), pixel_shuffle_factor=2,
                             initializer_range=INIT_STD)


# ---------------------------------------------------------------- PaliGemma (SigLIP + Gemma LM)
PALIGEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]
PALIGEMMA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{% endfor %}"
)


def _build_paligemma(arch: str, out: Path, dropout: float) -> None:
    from transformers import PaliGemmaConfig, SiglipImageProcessorPil

    tokenizer = byte_level_tokenizer(PALIGEMMA_SPECIALS, bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>",
                                     extra_special_tokens={"image_token": "<image>"})
    text = text_kwargs(tokenizer, dropout) | {"model_type": "gemma", "head_dim": TEXT_HIDDEN // TEXT_HEADS,
                                              "rope_theta": 10000.0}
    vision = dict(model_type="siglip_vision_model", hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN,
                  num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=PATCH,
                  projection_dim=TEXT_HIDDEN, attention_dropout=dropout)
    config = PaliGemmaConfig(vision_config=vision, text_config=text, projection_dim=TEXT_HIDDEN,
                             hidden_size=TEXT_HIDDEN, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                             vocab_size=vocab_size_for(tokenizer), pad_token_id=tokenizer.pad_token_id)
    image_processor = SiglipImageProcessorPil(size={"height": 28, "width": 28}, image_seq_length=4)
    _save(config, tokenizer, image_processor, PALIGEMMA_CHAT_TEMPLATE, out)


# ---------------------------------------------------------------- Gemma3 (SigLIP + Gemma3 LM)
GEMMA3_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                   "<end_of_image>", "<image_soft_token>"]
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>{{ 'model' if message['role'] == 'assistant' "
    "else message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<start_of_image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _build_gemma3(arch: str, out: Path, dropout: float) -> None:
    """Gemma3: a Gemma3 text model (a sliding-window layer, then global attention) and a SigLIP tower of 2x2 patches
    whose 4 outputs are the image's 4 soft tokens (``mm_tokens_per_image``; the real model pools 64x64 to 16x16)."""
    from transformers import Gemma3Config, Gemma3ImageProcessorPil

    tokenizer = byte_level_tokenizer(GEMMA3_SPECIALS, bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>",
                                     add_bos=True, extra_special_tokens={"boi_token": "<start_of_image>",
                                                                         "eoi_token": "<end_of_image>",
                                                                         "image_token": "<image_soft_token>"})
    ids = tokenizer.convert_tokens_to_ids
    text = text_kwargs(tokenizer, dropout) | {
        "model_type": "gemma3_text", "head_dim": TEXT_HIDDEN // TEXT_HEADS, "query_pre_attn_scalar": 16,
        "sliding_window": 512, "layer_types": ["sliding_attention", "full_attention"],
        "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                            "full_attention": {"rope_type": "default", "rope_theta": 10000.0}}}
    vision = dict(model_type="siglip_vision_model", hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN,
                  num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=PATCH,
                  attention_dropout=dropout)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                          boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
                          image_token_index=ids("<image_soft_token>"), initializer_range=INIT_STD)
    image_processor = Gemma3ImageProcessorPil(size={"height": 28, "width": 28}, do_pan_and_scan=False)
    _save(config, tokenizer, image_processor, GEMMA3_CHAT_TEMPLATE, out)


# ---------------------------------------------------------------- MiniCPM-V 4.6 / 4.7 (NaViT SigLIP + Qwen3.5 LM)
MINICPM_V4_TOKENS = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "image_start_token": "<image>",
                     "image_end_token": "</image>", "slice_start_token": "<slice>", "slice_end_token": "</slice>",
                     "image_id_start_token": "<image_id>", "image_id_end_token": "</image_id>"}
MINICPM_V4_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *MINICPM_V4_TOKENS.values()]
MINICPM_V4_CHAT_TEMPLATE = QWEN_CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<|image_pad|>\n")


def _build_minicpm_v4(arch: str, out: Path, dropout: float) -> None:
    """MiniCPM-V 4.6 / 4.7: a NaViT SigLIP of 14 px patches (2 layers, the window merger after the first), the MLP
    merger, and a Qwen3.5 text model (a Gated DeltaNet layer, then full attention). Crops of 56 px: 4x4 patches, one
    LLM token after the two 2x2 merges (``16x``); pages larger than 56x56 px are cut into at most 4 slices."""
    from transformers import MiniCPMV4_6Config, MiniCPMV4_6ImageProcessorPil, MiniCPMV4_7Config

    tokenizer = byte_level_tokenizer(MINICPM_V4_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>",
                                     extra_special_tokens=MINICPM_V4_TOKENS)
    ids = tokenizer.convert_tokens_to_ids
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True,
            "partial_rotary_factor": 1.0}
    text = text_kwargs(tokenizer, dropout) | {
        "model_type": "qwen3_5_text", "head_dim": TEXT_HIDDEN // TEXT_HEADS, "rope_parameters": rope,
        "layer_types": ["linear_attention", "full_attention"], "linear_conv_kernel_dim": 4, "linear_key_head_dim": 16,
        "linear_value_head_dim": 16, "linear_num_key_heads": 2, "linear_num_value_heads": 4}
    vision = dict(hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN, num_hidden_layers=2,
                  num_attention_heads=2, image_size=56, patch_size=PATCH, attention_dropout=dropout)
    common = dict(text_config=text, vision_config=vision, insert_layer_id=0, image_size=56,
                  image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"))
    if arch == "minicpmv4_7":
        config = MiniCPMV4_7Config(**common, image_start_id=ids("<image>"), image_end_id=ids("</image>"),
                                   slice_start_id=ids("<slice>"), slice_end_id=ids("</slice>"),
                                   newline_id=tokenizer("\n", add_special_tokens=False)["input_ids"][0])
    else:
        config = MiniCPMV4_6Config(**common)
    image_processor = MiniCPMV4_6ImageProcessorPil(scale_resolution=56, patch_size=PATCH, max_slice_nums=4)
    _save(config, tokenizer, image_processor, MINICPM_V4_CHAT_TEMPLATE, out)


def _save(config: PreTrainedConfig, tokenizer: PreTrainedTokenizerFast, image_processor: Any,
          chat_template: str, out: Path) -> None:
    """Writes the random-weight model of ``config``, the tokenizer (with chat template) and image processor.

    The files match a hub checkpoint (config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
    chat_template.jinja, preprocessor_config.json), so the model's own processor class also loads the
    directory where its optional dependencies (video processors need torchvision) are installed.
    """
    model = backbone_for_model_type(config.model_type).auto_class().from_config(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)


BUILDERS: dict[str, Callable[[str, Path, float], None]] = {
    "qwen2_vl": _build_qwen,
    "qwen2_5_vl": _build_qwen,
    "qwen3_vl": _build_qwen,
    "qwen3_5": _build_qwen,
    "internvl": _build_internvl,
    "internvl3_5": _build_internvl,
    "idefics3": _build_idefics3,
    "modernvbert": _build_idefics3,
    "paligemma": _build_paligemma,
    "gemma3": _build_gemma3,
    "minicpmv4_6": _build_minicpm_v4,
    "minicpmv4_7": _build_minicpm_v4,
}


IMAGE_PROCESSORS = {"qwen2_vl": "Qwen2VLImageProcessorPil", "qwen2_5_vl": "Qwen2VLImageProcessorPil",
                    "qwen3_vl": "Qwen2VLImageProcessorPil", "qwen3_5": "Qwen2VLImageProcessorPil",
                    "internvl": "GotOcr2ImageProcessorPil", "internvl3_5": "GotOcr2ImageProcessorPil",
                    "idefics3": "Idefics3ImageProcessorPil", "paligemma": "SiglipImageProcessorPil",
                    "gemma3": "Gemma3ImageProcessorPil", "modernvbert": "Idefics3ImageProcessorPil",
                    "minicpmv4_6": "MiniCPMV4_6ImageProcessorPil", "minicpmv4_7": "MiniCPMV4_6ImageProcessorPil"}
# Architectures that are a variant of another family (the same adapter and ``model_type``).
VARIANT_OF = {"internvl3_5": "internvl"}


def unavailable_reason(arch: str) -> str | None:
    """Why ``arch`` cannot be built with the installed transformers (None when it can).

    Some transformers releases make a PIL-backend image processor require torchvision anyway.
    """
    import transformers

    name = IMAGE_PROCESSORS[arch]
    try:
        getattr(transformers, name)()
    except ImportError as err:
        return f"{name} is unavailable in transformers {transformers.__version__}: {str(err).strip()[:120]}"
    return None


def build_tiny(arch: str, out: Path, *, dropout: float = 0.0, seed: int = 0) -> Path:
    """Writes a tiny random-weight checkpoint of ``arch`` to ``out`` and returns ``out``.

    ``dropout`` sets the attention/hidden dropout of the text and vision configs where the architecture
    has them; ``seed`` makes the random weights reproducible.
    """
    if arch not in BUILDERS:
        raise ValueError(f"unknown architecture {arch!r}; supported: {', '.join(sorted(BUILDERS))}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    BUILDERS[arch](arch, out, dropout)
    return out
