"""What a training run ran on: ``OUTPUT_DIR/environment.json``, written by rank 0 when a run (or a resume) starts.

It holds the start time, the step it started from, the world size, the devices (CUDA device names, or the CPU count),
the platform and the versions of Python and of the libraries that decide the numbers (torch, transformers, peft,
DeepSpeed, Triton); ``retriever.report`` prints it. Each start is appended, so a resumed run keeps its history.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from data_prep.outputs import write_text_atomic
from retriever.process_group import RankInfo

__all__ = ["ENVIRONMENT_FILE", "environment", "record_environment"]

ENVIRONMENT_FILE = "environment.json"
LIBRARIES = ("torch", "transformers", "peft", "deepspeed", "triton", "flash-attn")


def environment(env: RankInfo, step: int) -> dict[str, Any]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else [f"cpu ({os.cpu_count()} cores)"]
    return {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "step": step,
            "world_size": env.world, "devices": devices, "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions}


def record_environment(output_dir: str | Path, env: RankInfo, step: int) -> None:
    """Rank 0 appends this start to ``OUTPUT_DIR/environment.json``."""
    if not env.is_main:
        return
    path = Path(output_dir) / ENVIRONMENT_FILE
    starts = json.loads(path.read_text()) if path.exists() else []
    write_text_atomic(path, json.dumps([*starts, environment(env, step)], indent=2) + "\n")
