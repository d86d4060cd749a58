"""What made an output: a checkpoint's identity (a copy is the same checkpoint, one retrained in place or an
adapter on another base is not) and an encoder's fingerprint."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from retriever.model.identity import checkpoint_identity, ids_digest


def _checkpoint(directory: Path) -> Path:
    directory.mkdir()
    (directory / "config.json").write_text('{"model_type": "qwen2_vl"}')
    (directory / "model.safetensors").write_bytes(bytes(range(256)) * 20000)
    (directory / "README.md").write_text("notes")
    return directory


def test_a_copy_keeps_the_identity_and_new_weights_change_it(tmp_path: Path) -> None:
    model = _checkpoint(tmp_path / "ckpt")
    first = checkpoint_identity(model)
    assert first is not None and checkpoint_identity(shutil.copytree(model, tmp_path / "copy")) == first
    (model / "README.md").write_text("other notes")  # not part of what the model computes
    assert checkpoint_identity(str(model)) == first
    weights = bytearray((model / "model.safetensors").read_bytes())
    weights[-1] ^= 1  # retrained in place: same files, same sizes, other values
    (model / "model.safetensors").write_bytes(bytes(weights))
    assert checkpoint_identity(model) != first
    assert checkpoint_identity("Qwen/Qwen2.5-VL-7B-Instruct") is None  # a hub id or served name: its name is its identity
    assert checkpoint_identity(None) is None


def test_an_adapter_on_another_base_is_another_checkpoint(tmp_path: Path) -> None:
    bases = [_checkpoint(tmp_path / "base1"), _checkpoint(tmp_path / "base2")]
    (bases[1] / "config.json").write_text('{"model_type": "qwen2_vl", "hidden_size": 8}')
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"lora" * 100)
    identities = []
    for base in bases:
        (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
        identities.append(checkpoint_identity(adapter))
    assert identities[0] != identities[1]


def test_ids_digest_depends_on_every_id_and_their_order() -> None:
    assert ids_digest(["a", "b"]) == ids_digest(iter(["a", "b"]))
    assert len({ids_digest(["a", "b"]), ids_digest(["b", "a"]), ids_digest(["ab"]), ids_digest(["a", "b", ""])}) == 4


def test_an_encoder_fingerprint_names_its_checkpoint_head_and_dtype(tiny_model_dir) -> None:
    from retriever.model.saved import load_encoder

    model = tiny_model_dir("qwen2_vl")
    dense = load_encoder(model, settings={"head": "dense"}, dtype="float32")
    multi = load_encoder(model, settings={"head": "multi"}, dtype="bfloat16")
    assert dense.fingerprint["model checkpoint"] == multi.fingerprint["model checkpoint"] == checkpoint_identity(model)
    assert (dense.fingerprint["head"], dense.fingerprint["dtype"]) == ("dense", "float32")
    assert (multi.fingerprint["head"], multi.fingerprint["dtype"]) == ("multi", "bfloat16")
    assert json.loads(json.dumps(dense.fingerprint)) == dense.fingerprint  # recorded as JSON
