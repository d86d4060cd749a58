"""Runs of ``python -m retriever.train`` as a subprocess: flags for the tiny model and the toy pairs, the
environment, and a kill -9 as soon as a checkpoint is complete."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.paths import REPO_ROOT

REPO = REPO_ROOT


def train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(model), "--output_dir", str(out), "--train_data", str(data / "pairs.jsonl"),
            "--image_root", str(data / "images"), "--per_device_train_batch_size", "4", "--num_negatives", "1",
            "--gc_chunk_size", "3", "--training_mode", "full", "--learning_rate", "1e-3", "--seed", "3",
            "--dataloader_num_workers", "0", "--report_to", "none", "--disable_tqdm", *extra]


def train_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run_train(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "retriever.train", *args], env=train_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def kill_at_checkpoint(args: list[str], out: Path, step: int = 2) -> None:
    """Start ``retriever.train`` with ``args`` and kill -9 it as soon as ``out/checkpoint-<step>`` is complete."""
    proc = subprocess.Popen([sys.executable, "-m", "retriever.train", *args], env=train_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (out / f"checkpoint-{step}" / "COMPLETE").exists():
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
