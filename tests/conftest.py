"""Shared fixtures: tiny random-weight checkpoints built offline, once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run in Triton's interpreter on CPU-only machines. The flag is read when triton.language is
    # first imported (other test modules import it indirectly, e.g. through peft), so it is set here, first.
    os.environ.setdefault("TRITON_INTERPRET", "1")

ARCHS = ("qwen2_vl", "qwen2_5_vl", "internvl", "idefics3", "paligemma")
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_PDFS = REPO_ROOT.parent / "shared" / "pdfs"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: ``tiny_model_dir("qwen2_vl")`` -> directory of a tiny checkpoint, built on first use."""
    from retriever.tiny import build_tiny

    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = build_tiny(arch, tmp_path_factory.mktemp(f"tiny_{arch}"))
        return built[arch]

    return get


@pytest.fixture(scope="session")
def shared_pdfs() -> Path:
    if not SHARED_PDFS.is_dir():
        pytest.skip("../shared/pdfs is absent")
    return SHARED_PDFS
