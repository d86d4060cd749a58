"""DeepSpeed configs: "auto" fields follow the flags; explicit values that contradict them are refused."""
from __future__ import annotations

from pathlib import Path

import pytest

from retriever.training.ds_config import TrainingShape, load_deepspeed_config, resolve_deepspeed_config, zero_stage
from tests.helpers.paths import REPO_ROOT

CONFIGS = REPO_ROOT / "ds_configs"
SHAPE = TrainingShape(micro_batch_size=4, gradient_accumulation_steps=2, world_size=3, max_grad_norm=1.0, bf16=False,
                      hidden_size=64)


@pytest.mark.parametrize("name, stage", [("zero1", 1), ("zero2", 2), ("zero3", 3), ("zero3_offload", 3)])
def test_shipped_configs_resolve(name, stage):
    config = resolve_deepspeed_config(load_deepspeed_config(CONFIGS / f"{name}.json"), SHAPE, name)
    assert config["train_batch_size"] == 24
    assert config["train_micro_batch_size_per_gpu"] == 4
    assert config["gradient_accumulation_steps"] == 2
    assert config["gradient_clipping"] == 1.0
    assert config["bf16"]["enabled"] is False
    assert zero_stage(config) == stage
    assert "auto" not in str(config)


def test_contradiction_is_refused():
    config = {"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 2}}
    with pytest.raises(ValueError, match=r"my\.json: train_micro_batch_size_per_gpu is 8 but the training flags give 4"):
        resolve_deepspeed_config(config, SHAPE, "my.json")
    with pytest.raises(ValueError, match="bf16.enabled"):
        resolve_deepspeed_config({"bf16": {"enabled": True}}, SHAPE, "my.json")


def test_malformed_file_names_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "a": 1,\n  oops\n}')
    with pytest.raises(ValueError, match=r"broken\.json: invalid JSON at line 3"):
        load_deepspeed_config(path)
