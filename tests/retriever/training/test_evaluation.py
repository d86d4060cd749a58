"""Evaluation during training under DeepSpeed ZeRO-3 on 2 ranks: metrics in the log at every eval step, and the
best checkpoint is the one the logged metric picks (reloaded and re-evaluated offline, it scores the same)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image, ImageDraw

from retriever.training.logs import read_log
from tests.helpers.training_runs import REPO, train_env

PAGES = 16


def _store(root):
    from data_prep.store import PageStoreWriter

    with PageStoreWriter(root / "store") as writer:
        for i in range(PAGES):
            image = Image.new("RGB", (56, 56), (15 * i % 256, 255 - 13 * i % 256, 60 * (i % 4)))
            ImageDraw.Draw(image).text((4, 20), f"d{i}", fill="black")
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            writer.add(f"doc{i}/1", buffer.getvalue())
    pairs = [json.dumps({"query": f"what does page {i} say?", "pos": [f"doc{i}/1"]}) for i in range(PAGES)]
    (root / "train.jsonl").write_text("\n".join(pairs[:12]) + "\n")
    (root / "heldout.jsonl").write_text("\n".join(pairs[12:]) + "\n")


@pytest.mark.distributed
def test_zero3_two_ranks_eval_during_training_keeps_the_best_checkpoint(tiny_model_dir, tmp_path):
    from eval.datasets import load_retrieval_data
    from eval.evaluate import evaluate_task
    from retriever.model.saved import load_encoder
    from retriever.process_group import RankInfo

    _store(tmp_path)
    out = tmp_path / "run"
    args = ["--model_name_or_path", str(tiny_model_dir("qwen2_vl")), "--output_dir", str(out), "--train_data",
            str(tmp_path / "train.jsonl"), "--page_store", str(tmp_path / "store"), "--per_device_train_batch_size",
            "2", "--gc_chunk_size", "1", "--training_mode", "full", "--learning_rate", "3e-3", "--seed", "3",
            "--dataloader_num_workers", "0", "--report_to", "none", "--disable_tqdm", "--max_steps", "3",
            "--save_steps", "100", "--deepspeed", str(REPO / "ds_configs" / "zero3.json"),
            "--eval_data", str(tmp_path / "heldout.jsonl"), "--eval_steps", "1", "--save_best",
            "--metric_for_best", "recall_at_5"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", str(32500 + os.getpid() % 1000), "-m", "retriever.train"]
    proc = subprocess.run([*torchrun, *args], env=train_env(), cwd=REPO, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-4000:]

    log = read_log(out / "log.jsonl")
    logged = {step: record["eval_recall_at_5"] for step, record in log.items()}
    assert sorted(logged) == [1, 2, 3] and all("eval_ndcg_at_10" in log[s] for s in logged)
    best = json.loads((out / "best" / "best.json").read_text())
    first_max = min(step for step, value in logged.items() if value == max(logged.values()))
    assert best["step"] == first_max and best["value"] == max(logged.values())
    assert best["metrics"]["ndcg_at_10"] == log[first_max]["eval_ndcg_at_10"]

    data = load_retrieval_data(str(tmp_path / "heldout.jsonl"), page_store=tmp_path / "store")
    _, metrics = evaluate_task(load_encoder(out / "best"), data, RankInfo(), k_values=(5, 10))
    assert metrics["aggregate"]["ndcg_at_10"] == pytest.approx(best["metrics"]["ndcg_at_10"], abs=1e-6)
    assert (out / "loss.png").exists() and (out / "final" / "model.safetensors").exists()


def test_eval_flags_are_checked_before_training(tmp_path):
    from retriever.process_group import RankInfo
    from retriever.training.args import parse_args
    from retriever.training.evaluation import TrainingEvaluation

    base = ["--model_name_or_path", "m", "--output_dir", str(tmp_path), "--train_data", "t.jsonl"]
    with pytest.raises(SystemExit):
        parse_args(base + ["--save_best"])  # without --eval_data
    with pytest.raises(ValueError, match="--metric_for_best ndcg_at_3: choose one of"):
        TrainingEvaluation(None, RankInfo(), tmp_path, 5, 8, "ndcg_at_3", True)
    evaluation = TrainingEvaluation(None, RankInfo(), tmp_path, 5, 8, "recall_at_10", True)
    assert [s for s in range(1, 13) if evaluation.due(s, 12)] == [5, 10, 12]
    assert evaluation.best is None
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "best.json").write_text(json.dumps({"step": 5, "value": 0.25}))
    assert TrainingEvaluation(None, RankInfo(), tmp_path, 5, 8, "recall_at_10", True).best == 0.25  # a resumed run
