"""Training modes (full / lora / head, frozen vision tower), LoRA presets, LoRA save/load and merge."""
from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

from retriever.merge import main as merge_main
from retriever.model.encoder import EncoderConfig, RetrieverEncoder
from retriever.model.saved import load_encoder, save_encoder, save_merged
from retriever.model.training_modes import LoraSettings, lora_target_regex
from tests.helpers.tiny_models import ARCH_PARAMS

PAGES = [Image.new("RGB", (80, 60), (200, 30, 30)), Image.new("RGB", (150, 100), (10, 120, 250))]


def load(path, arch: str, mode: str, **kwargs) -> RetrieverEncoder:
    config = EncoderConfig(backbone=arch, projection_dim=32)
    return load_encoder(path, config, training_mode=mode, **kwargs)


def lora_params(model: torch.nn.Module, regex: str, r: int) -> int:
    """Expected LoRA parameter count: r * (in + out) for every Linear whose name matches ``regex``."""
    return sum(r * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and re.fullmatch(regex, name))


def unique_numel(params) -> int:
    return sum(p.numel() for p in {id(p): p for p in params}.values())


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_trainable_parameter_counts(arch, tiny_model_dir):
    path = tiny_model_dir(arch)
    full = load(path, arch, "full")
    head = 64 * 32 + 32
    output = full.hf_model.get_output_embeddings()  # None for an encoder (ModernVBERT)
    untied = output is not None and output.weight is not full.hf_model.get_input_embeddings().weight
    total = unique_numel(full.hf_model.parameters())
    assert full.trainable_parameter_count() == total - (output.weight.numel() if untied else 0) + head
    vision = unique_numel(full.vision_module().parameters())
    assert 0 < vision < total
    assert load(path, arch, "full", freeze_vision=True).trainable_parameter_count() == \
        full.trainable_parameter_count() - vision
    assert load(path, arch, "head").trainable_parameter_count() == head

    base = full.hf_model
    settings = LoraSettings(r=4)
    language = lora_params(base, full.backbone.lora_language, 4)
    vision_lora = lora_params(base, full.backbone.lora_vision, 4)
    assert language > 0 and vision_lora > 0  # the presets match this family's module names
    assert load(path, arch, "lora", lora=settings).trainable_parameter_count() == language + head
    with_vision = LoraSettings(r=4, include_vision=True)
    assert load(path, arch, "lora", lora=with_vision).trainable_parameter_count() == language + vision_lora + head
    frozen = load(path, arch, "lora", lora=with_vision, freeze_vision=True)
    assert frozen.trainable_parameter_count() == language + head
    assert not any(p.requires_grad for p in frozen.vision_module().parameters())


def test_vision_preset_is_not_applied_when_frozen(tiny_model_dir):
    enc = load(tiny_model_dir("qwen2_vl"), "qwen2_vl", "full")
    both = lora_target_regex(enc.backbone, LoraSettings(include_vision=True), freeze_vision=False)
    assert re.fullmatch(both, "model.visual.blocks.0.attn.qkv")
    assert re.fullmatch(both, "model.language_model.layers.1.mlp.down_proj")
    frozen = lora_target_regex(enc.backbone, LoraSettings(include_vision=True), freeze_vision=True)
    assert not re.fullmatch(frozen, "model.visual.blocks.0.attn.qkv")
    assert lora_target_regex(enc.backbone, LoraSettings(target_modules=r".*q_proj"), False) == r".*q_proj"


def test_gradients_reach_only_trainable_parameters(tiny_model_dir):
    enc = load(tiny_model_dir("internvl"), "internvl", "lora", freeze_vision=True).train()
    enc(enc.prepare_pages(PAGES)).sum().backward()
    for name, p in enc.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name


def test_unknown_mode(tiny_model_dir):
    with pytest.raises(ValueError, match="supported: full, lora, head"):
        load(tiny_model_dir("qwen2_vl"), "qwen2_vl", "prefix")


@pytest.mark.parametrize("arch", ["qwen2_vl", "paligemma", "qwen3_5", "gemma3", "modernvbert", "minicpmv4_6"])
def test_lora_save_load_and_merge(arch, tiny_model_dir, tmp_path):
    enc = load_encoder(
        tiny_model_dir(arch), EncoderConfig(backbone=arch, head="multi", multi_dim=16), training_mode="lora",
        lora=LoraSettings(r=4, include_vision=True), dtype=torch.float64)
    with torch.no_grad():  # LoRA B starts at zero; make the adapters change the output
        for name, p in enc.model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    batch = enc.prepare_pages(PAGES)
    want = enc(batch).emb
    run = tmp_path / "run"
    save_encoder(enc, run)
    assert (run / "adapter_model.safetensors").is_file() and not (run / "model.safetensors").exists()

    again = load_encoder(run, training_mode="lora", dtype=torch.float64)
    assert again.is_peft and again.trainable_parameter_count() == enc.trainable_parameter_count()
    assert again.lora == enc.lora
    assert torch.equal(again(batch).emb, want)

    base = load_encoder(tiny_model_dir(arch), EncoderConfig(backbone=arch, head="multi",
                                            multi_dim=16), dtype=torch.float64)
    base.head.load_state_dict(enc.head.state_dict())
    assert (base(batch).emb - want).abs().max() > 1e-3  # the adapters do change the embeddings

    merge_main(["--model", str(run), "--out", str(tmp_path / "merged"), "--dtype", "float64"])
    merged = load_encoder(tmp_path / "merged", dtype=torch.float64)
    assert not merged.is_peft and merged.training_mode == "full"
    assert (merged(batch).emb - want).abs().max() < 1e-10
    save_merged(enc, tmp_path / "copy")  # not in place: the encoder keeps its adapters
    assert enc.is_peft and torch.equal(enc(batch).emb, want)


def test_merge_rejects_a_full_checkpoint(tiny_model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        merge_main(["--model", str(tiny_model_dir("paligemma")), "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert r"adapter_config.json is missing" in capsys.readouterr().err
