"""Shared fixtures (tiny random-weight checkpoints built offline once per test session, toy training data) and the
suite's scheduling: under pytest-xdist (``shell/test.sh`` runs two workers), every test that launches several
ranks runs on one worker, one after the other, so that two torchrun jobs never share the two cores at once."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from tests.helpers.paths import SHARED_PDFS

if not torch.cuda.is_available():
    # Triton kernels run in Triton's interpreter on CPU-only machines. The flag is read when triton.language is
    # first imported (other test modules import it indirectly, e.g. through peft), so it is set here, first.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Multi-rank tests form one xdist group (honoured with ``--dist loadgroup``)."""
    for item in items:
        if item.get_closest_marker("distributed") is not None:
            item.add_marker(pytest.mark.xdist_group("torchrun"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: ``tiny_model_dir("qwen2_vl")`` -> directory of a tiny checkpoint, built on first use."""
    from retriever.model.tiny_checkpoints import build_tiny

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


TRAIN_PAGES = 24


@pytest.fixture(scope="session")
def train_data(tmp_path_factory):
    """A folder of small distinct page images and pairs with hard negatives."""
    root = tmp_path_factory.mktemp("train_data")
    images = root / "images"
    images.mkdir()
    for i in range(TRAIN_PAGES):
        image = Image.new("RGB", (56 + 8 * (i % 3), 56), (10 * i % 256, 255 - 9 * i % 256, 40 * (i % 5)))
        ImageDraw.Draw(image).text((4, 20), f"p{i}", fill="black")
        image.save(images / f"page{i}.png")
    lines = [json.dumps({"query": f"what is on page {i}?", "pos": [f"page{i}.png"],
                         "neg": [f"page{(i + 1) % TRAIN_PAGES}.png", f"page{(i + 5) % TRAIN_PAGES}.png"]}) for i in range(TRAIN_PAGES)]
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return root
