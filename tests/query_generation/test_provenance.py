"""The identity of a local checkpoint in a generation run's settings record: a copy is the same checkpoint, one
retrained in place is not."""
from __future__ import annotations

import shutil
from pathlib import Path

from query_generation.provenance import model_identity, settings_path


def test_a_copy_keeps_the_identity_and_new_weights_change_it(tmp_path: Path) -> None:
    model = tmp_path / "ckpt"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen2_vl"}')
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 20000)
    (model / "README.md").write_text("notes")
    first = model_identity(str(model))
    assert first is not None and model_identity(str(shutil.copytree(model, tmp_path / "copy"))) == first
    (model / "README.md").write_text("other notes")  # not part of what the model computes
    assert model_identity(str(model)) == first
    weights = bytearray((model / "model.safetensors").read_bytes())
    weights[-1] ^= 1  # retrained in place: same files, same sizes, other values
    (model / "model.safetensors").write_bytes(bytes(weights))
    assert model_identity(str(model)) != first
    assert model_identity("Qwen/Qwen2.5-VL-7B-Instruct") is None  # a hub id or served name: its name is its identity


def test_the_record_lies_beside_the_queries_file(tmp_path: Path) -> None:
    assert settings_path(tmp_path / "queries.jsonl") == tmp_path / "queries.settings.json"
