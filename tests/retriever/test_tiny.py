"""Tiny offline checkpoints: files, loading through the transformers Auto classes, tokens, CLI."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoTokenizer

from retriever.model.saved import load_image_processor
from retriever.model.tiny_checkpoints import BUILDERS, VARIANT_OF, build_tiny
from retriever.tiny import main
from tests.helpers.tiny_models import ARCHS, ARCH_PARAMS

IMAGE_TOKENS = {
    "qwen2_vl": ["<|image_pad|>", "<|vision_start|>", "<|vision_end|>"],
    "qwen2_5_vl": ["<|image_pad|>", "<|vision_start|>", "<|vision_end|>"],
    "qwen3_vl": ["<|image_pad|>", "<|vision_start|>", "<|vision_end|>"],
    "qwen3_5": ["<|image_pad|>", "<|vision_start|>", "<|vision_end|>"],
    "internvl": ["<img>", "</img>", "<IMG_CONTEXT>"],
    "idefics3": ["<image>", "<fake_token_around_image>", "<global-img>", "<row_1_col_1>", "<row_6_col_6>"],
    "paligemma": ["<image>", "<bos>"],
    "gemma3": ["<start_of_image>", "<image_soft_token>", "<end_of_image>", "<start_of_turn>"],
    "modernvbert": ["<image>", "<fake_token_around_image>", "<global-img>", "<row_1_col_1>"],
    "minicpmv4_6": ["<|image_pad|>", "<image>", "</image>", "<slice>", "</slice>", "<image_id>", "</image_id>"],
    "minicpmv4_7": ["<|image_pad|>", "<image>", "</image>", "<slice>", "</slice>", "<image_id>", "</image_id>"],
}


def test_every_supported_arch_has_a_builder():
    assert sorted(BUILDERS) == sorted([*ARCHS, *VARIANT_OF])


@pytest.mark.parametrize("arch", [*ARCH_PARAMS, *VARIANT_OF])
def test_checkpoint_loads_like_a_hub_checkpoint(arch, tiny_model_dir):
    path = tiny_model_dir(arch)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "preprocessor_config.json", "chat_template.jinja"):
        assert (path / name).is_file(), name
    assert AutoConfig.from_pretrained(path).model_type == VARIANT_OF.get(arch, arch)
    model = (AutoModel if arch == "modernvbert" else AutoModelForImageTextToText).from_pretrained(path)
    assert sum(p.numel() for p in model.parameters()) < 400_000  # tiny: CPU tests stay fast
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert len(tokenizer) <= model.get_input_embeddings().num_embeddings
    for token in IMAGE_TOKENS[VARIANT_OF.get(arch, arch)]:  # special tokens are atomic, as in the real tokenizers
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] >= 256, (token, ids)
    text = "Query: naïve façade 42 ÷ 7"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert tokenizer.chat_template
    load_image_processor(path)  # the PIL backend loads without torchvision


def test_build_is_seeded_and_dropout_is_set(tmp_path):
    a = build_tiny("paligemma", tmp_path / "a", seed=3)
    b = build_tiny("paligemma", tmp_path / "b", seed=3, dropout=0.25)
    wa = AutoModelForImageTextToText.from_pretrained(a).state_dict()
    wb = AutoModelForImageTextToText.from_pretrained(b).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    config = json.loads((b / "config.json").read_text())
    assert config["text_config"]["attention_dropout"] == 0.25
    assert config["vision_config"]["attention_dropout"] == 0.25


def test_unknown_arch_lists_supported(tmp_path):
    with pytest.raises(ValueError, match="supported: gemma3, idefics3, internvl, internvl3_5, minicpmv4_6, "
                                         "minicpmv4_7, modernvbert, paligemma, qwen2_5_vl, qwen2_vl, qwen3_5, "
                                         "qwen3_vl"):
        build_tiny("llava", tmp_path)


def test_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    main(["--arch", "qwen2_vl", "--out", str(tmp_path / "m"), "--seed", "1"])
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert str(tmp_path / "m") in capsys.readouterr().out
