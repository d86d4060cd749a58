"""MiniCPM-V 4.6 / 4.7 through transformers' own processor and model: page inputs equal ``MiniCPMV4_*Processor``'s
(token ids, packed pixels, crop grids, 4.7's ``mm_token_type_ids``) and our batched hidden states equal the model's
forward on the processor's output, one page at a time, in float64."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from retriever.model.backbones.minicpm_v4 import packed, patch_rows
from retriever.model.encoder import EncoderConfig
from retriever.model.saved import load_encoder
from tests.helpers.published_refs import lenient_processor_init

ARCHS = ("minicpmv4_6", "minicpmv4_7")
# (height, width): no slices, a 1x2 and a 1x3 row, a 2x2 grid and a 3x1 column (rows joined by newlines)
SIZES = ((40, 30), (60, 80), (100, 200), (300, 200), (200, 100))


def pages() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


def reference_processor(backbone):
    """The model's processor class over the checkpoint's tokenizer and image processor (no video processor here:
    torchvision does not import; it is never used for images)."""
    import transformers

    name = "MiniCPMV4_7Processor" if backbone.name == "minicpmv4_7" else "MiniCPMV4_6Processor"
    video = SimpleNamespace(slice_mode=False, downsample_mode=backbone.image_processor.downsample_mode)
    with lenient_processor_init():
        return getattr(transformers, name)(image_processor=backbone.image_processor, video_processor=video,
                                           tokenizer=backbone.tokenizer)


@pytest.fixture(scope="module", params=ARCHS)
def encoder(request, tiny_model_dir):
    return load_encoder(tiny_model_dir(request.param), EncoderConfig(backbone=request.param, head="multi"),
                        dtype=torch.float64)


def test_patch_rows_round_trip() -> None:
    pixels = torch.randn(1, 3, 14, 14 * 12)
    rows = patch_rows(pixels)
    assert rows.shape == (12, 3, 14, 14) and torch.equal(packed(rows), pixels)
    assert torch.equal(rows[5], pixels[0, :, :, 5 * 14:6 * 14])


def test_pages_equal_the_processor_and_the_model(encoder) -> None:
    backbone = encoder.backbone
    processor = reference_processor(backbone)
    prompt = "What is shown in this page?"
    template = backbone.input_format.page.replace("{image}", backbone.tokenizer.image_token)
    batch = encoder.prepare_pages(pages())
    with torch.no_grad():
        ours = backbone.hidden_states(encoder.hf_model, batch)
    grids = set()
    for row, image in enumerate(pages()):
        want = processor(images=[image], text=[template.replace("{text}", prompt)], return_tensors="pt")
        example = backbone.page_example(image, prompt)
        assert example.input_ids == want["input_ids"][0].tolist()
        assert torch.equal(packed(example.tensors["pixel_values"]), want["pixel_values"])
        assert torch.equal(example.tensors["target_sizes"], want["target_sizes"])
        grids.add(want["target_sizes"].shape[0])
        inputs = {k: v for k, v in want.items() if k != "pixel_values"}
        if backbone.name == "minicpmv4_7":
            assert torch.equal(backbone.mm_token_types(want)["mm_token_type_ids"], want["mm_token_type_ids"])
        with torch.no_grad():
            reference = encoder.hf_model.model(**inputs, pixel_values=want["pixel_values"].double(),
                                               use_cache=False).last_hidden_state[0]
        n = reference.shape[0]
        assert batch["attention_mask"][row, :n].all() and not batch["attention_mask"][row, n:].any()
        assert (ours[row, :n] - reference).abs().max() < 1e-10
    assert grids == {1, 3, 4, 5}  # overview only, and overview + 2, 3 or 4 slices


def test_visual_token_cap_limits_the_slices(tiny_model_dir) -> None:
    path = tiny_model_dir("minicpmv4_6")
    big = Image.new("RGB", (400, 300), "white")
    full = load_encoder(path, EncoderConfig(backbone="minicpmv4_6")).prepare_pages([big])
    capped = load_encoder(path, EncoderConfig(backbone="minicpmv4_6", max_visual_tokens=3)).prepare_pages([big])
    assert capped["target_sizes"].shape[0] == 3 < full["target_sizes"].shape[0] == 5


def test_missing_linear_attention_kernels_warn_once_on_cuda(encoder, monkeypatch, caplog) -> None:
    """The Qwen3.5 text model's fast path needs flash-linear-attention and causal-conv1d on CUDA; without them one
    warning names the packages (per family and process); CPU runs say nothing."""
    from retriever.model.backbones import base

    base._warn_missing_kernels.cache_clear()
    monkeypatch.setattr(base.importlib.util, "find_spec", lambda name: None)
    with caplog.at_level("WARNING"):
        base.warn_missing_kernels(encoder.backbone, torch.device("cpu"))
        assert not caplog.records
        for _ in range(3):
            base.warn_missing_kernels(encoder.backbone, torch.device("cuda"))
    assert [r.getMessage() for r in caplog.records] == [
        f"{encoder.backbone.name} on CUDA without flash-linear-attention / causal-conv1d (pip install "
        "flash-linear-attention causal-conv1d): its linear-attention layers run on transformers' slow PyTorch "
        "fallback"]
    base._warn_missing_kernels.cache_clear()
