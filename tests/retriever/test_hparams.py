"""retriever.hparams: recommended flags with reasons (the chunk rule on CPU, said so), read by retriever.train
--hparams as defaults that command-line flags override; --auto_batch asks for the measured chunk."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.errors import InputError
from retriever.hparams import main, recommend
from retriever.training.args import parse_args
from tests.helpers.training_runs import train_args


def test_rules_by_size_and_mode() -> None:
    flags, reasons = recommend(2_000_000_000, "lora", "multi", 60_000, 8, 256, (16, "measured"))
    assert flags["learning_rate"] == 2e-4 and (flags["lora_r"], flags["lora_alpha"]) == (32, 32)
    assert flags["per_device_train_batch_size"] == 32 and flags["gc_chunk_size"] == 16
    assert flags["num_train_epochs"] == 1 and flags["warmup_steps"] == min(100, 235 // 20)
    full, _ = recommend(2_000_000_000, "full", "dense", None, 1, 256, (8, "rule"))
    assert full["learning_rate"] == 1e-5 and "lora_r" not in full and "num_train_epochs" not in full
    assert set(reasons) == set(flags)


def test_cli_writes_flags_the_trainer_reads(tiny_model_dir, train_data, tmp_path: Path, capsys) -> None:
    out = tmp_path / "h.json"
    assert main(["--model", str(tiny_model_dir("qwen2_vl")), "--train_data", str(train_data / "pairs.jsonl"),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "not measured: no CUDA device here" in printed and "| --learning_rate | 0.0005 |" in printed
    data = json.loads(out.read_text())
    assert data["flags"]["per_device_train_batch_size"] == 24 and data["flags"]["lora_r"] == 16
    base = train_args(tiny_model_dir("qwen2_vl"), train_data, tmp_path / "run")
    args = parse_args([*[a for a in base if a not in ("--learning_rate", "1e-3")], "--hparams", str(out),
                       "--learning_rate", "0.01", "--auto_batch"])
    assert args.learning_rate == 0.01 and args.lora_r == 16 and args.num_train_epochs == data["flags"][
        "num_train_epochs"]
    assert args.gc_chunk_size == "auto" and args.per_device_train_batch_size == 4  # the command line wins
    out.write_text(json.dumps({"flags": {"learning_rate": 0.1, "lr_warmup": 3}}))
    with pytest.raises(InputError, match=f"--hparams {out}: not retriever.train flags: lr_warmup"):
        parse_args([*base, "--hparams", str(out)])
