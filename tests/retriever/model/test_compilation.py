"""--compile: compiled heads and backbone give the eager embeddings (float32, 1e-5) and keep the state dict; a module
that cannot compile runs eagerly after one warning."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from retriever.model import compilation
from retriever.model.encoder import EncoderConfig
from retriever.model.saved import load_encoder


def pages() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((60, 80), (90, 40))]


def test_compiled_encoder_gives_the_eager_embeddings(tiny_model_dir) -> None:
    enc = load_encoder(tiny_model_dir("qwen2_vl"), EncoderConfig(backbone="qwen2_vl", head="multi"))
    batch, keys = enc.prepare_pages(pages()), set(enc.state_dict())
    with torch.no_grad():
        want = enc(batch)
        compilation.compile_encoder(enc, "all", backend="eager")  # Dynamo's tracing, without Inductor's C++ build
        got = enc(batch)
    assert torch.allclose(got.emb, want.emb, atol=1e-5) and torch.equal(got.mask, want.mask)
    assert set(enc.state_dict()) == keys


def test_a_module_that_cannot_compile_runs_eagerly_after_one_warning(tiny_model_dir, monkeypatch, caplog) -> None:
    enc = load_encoder(tiny_model_dir("qwen2_vl"), EncoderConfig(backbone="qwen2_vl", head="dense"))
    batch = enc.prepare_pages(pages())
    with torch.no_grad():
        want = enc(batch)

    def broken(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("no C++ compiler found")
        return call

    monkeypatch.setattr(compilation.torch, "compile", broken)
    compilation.compile_encoder(enc, "heads")
    with caplog.at_level("WARNING"), torch.no_grad():
        assert torch.equal(enc(batch), want) and torch.equal(enc(batch), want)
    assert [r.getMessage() for r in caplog.records] == [
        "--compile: the head runs eagerly: torch.compile failed (no C++ compiler found)"]
