"""Broken files are one error line too: a truncated or corrupt weight file (``model.safetensors``, LoRA adapter
files), a training state that is truncated or holds pickled objects, a truncated mining-cache shard, and an MTEB task
whose dataset is neither cached nor downloadable (docs/ERRORS.md, "retriever and eval")."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
import torch

from data_prep.errors import DEBUG_ENV
from tests.helpers.cli import one_error_line


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _pickle_an_object(path: Path) -> None:
    """``path`` holding a pickled Python object, which ``torch.load(weights_only=True)`` refuses."""
    torch.save(argparse.Namespace(step=1), path)


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA retriever of the tiny Qwen2-VL, as a training run's final/ holds it."""
    from retriever.model.saved import load_encoder, save_encoder
    from retriever.model.training_modes import LoraSettings

    run = tmp_path_factory.mktemp("lora") / "final"
    save_encoder(load_encoder(tiny_model_dir("qwen2_vl"), settings={"head": "multi"}, training_mode="lora",
                              lora=LoraSettings(r=2, alpha=4)), run)
    return run


# a checkpoint file cut in half, the command that loads it, what its one line says
TRUNCATED = {
    "model.safetensors": ("retriever.export", "{m}/model.safetensors (the weights) is truncated or corrupt (Error "
                          "while deserializing header: incomplete metadata, file not fully covered); copy or save the "
                          "checkpoint again"),
    "heads.safetensors": ("retriever.merge", "{m}/heads.safetensors (the retrieval heads) is truncated or corrupt"),
    "adapter_model.safetensors": ("retriever.merge", "{m}/adapter_model.safetensors (the LoRA adapter) is truncated "
                                  "or corrupt"),
    "adapter_config.json": ("retriever.merge", "{m}/adapter_config.json: line "),
}


@pytest.mark.parametrize("name", TRUNCATED)
def test_a_truncated_checkpoint_file_is_one_line(name, lora_run, tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    module, expected = TRUNCATED[name]
    model = Path(shutil.copytree(tiny_model_dir("qwen2_vl") if name == "model.safetensors" else lora_run,
                                 tmp_path / "model"))
    _truncate(model / name)
    args = ["--model", model, "--out", tmp_path / "out"] + (["--format", "transformers"] if "export" in module else [])
    line = one_error_line(__import__(module, fromlist=["main"]).main, args, capsys)
    assert expected.format(m=model) in line


@pytest.fixture(scope="module")
def checkpointed_run(tiny_model_dir, train_data, tmp_path_factory) -> Path:
    """The output dir of a 2-step training run of the tiny model with a checkpoint after step 1."""
    from retriever.train import main
    from tests.helpers.training_runs import train_args

    out = tmp_path_factory.mktemp("run") / "out"
    main(train_args(tiny_model_dir("qwen2_vl"), train_data, out, "--max_steps", "2", "--save_steps", "1"))
    return out


@pytest.mark.parametrize("damage, expected", [
    (_truncate, "{c}/backend.pt (the training state) is truncated or corrupt (PytorchStreamReader failed reading "
                "zip archive: failed finding central directory); delete {c} and resume from an older checkpoint"),
    (_pickle_an_object,
     "{c}/backend.pt (the training state) holds pickled Python objects (Unsupported global: GLOBAL "
     "argparse.Namespace), which are never loaded (torch.load runs with weights_only=True)"),
])
def test_a_broken_training_state_is_one_line(damage, expected, checkpointed_run, tiny_model_dir, train_data,
                                             tmp_path, capsys, monkeypatch):
    from retriever.train import main
    from tests.helpers.training_runs import train_args

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    out = Path(shutil.copytree(checkpointed_run, tmp_path / "out"))
    damage(out / "checkpoint-1" / "backend.pt")
    args = train_args(tiny_model_dir("qwen2_vl"), train_data, out, "--max_steps", "2", "--save_steps", "1",
                      "--resume_from_checkpoint", "latest")
    assert expected.format(c=out / "checkpoint-1") in one_error_line(main, args, capsys)


def test_a_truncated_mine_cache_shard_is_one_line(tiny_model_dir, train_data, tmp_path, capsys, monkeypatch):
    from retriever.mine import main
    from retriever.model.encoder import EncoderConfig
    from retriever.model.saved import load_encoder, save_encoder

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    save_encoder(load_encoder(tiny_model_dir("qwen2_vl"), EncoderConfig(backbone="qwen2_vl")), tmp_path / "model")
    args = ["--model", tmp_path / "model", "--train_data", train_data / "pairs.jsonl", "--image_root",
            train_data / "images", "--out", tmp_path / "mined.jsonl", "--shard_size", "8", "--num_negatives", "1",
            "--range_max", "4"]
    main([str(arg) for arg in args])
    shard = tmp_path / "mined.jsonl.cache" / "pages-00001.safetensors"
    _truncate(shard)
    line = one_error_line(main, args, capsys)
    assert f"{shard} (a cached embedding shard) is truncated or corrupt" in line
    assert "delete it and run the same command again (only the missing shards are encoded)" in line


def test_an_mteb_task_without_hub_or_local_copy_is_one_line(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import datasets
    import huggingface_hub

    from eval.retrieval import main

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    line = one_error_line(main, ["--model", tiny_model_dir("qwen2_vl"), "--tasks", "vidore_v1", "--out",
                                 tmp_path / "eval"], capsys)
    assert "is not available offline (HF_HUB_OFFLINE=1); download it where the hub is reachable (huggingface-cli " \
           "download" in line and "--repo-type dataset --local-dir DIR) and give the local copy as Vidore" in line
