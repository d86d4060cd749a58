"""GradCache on tiny random-weight VLMs (float64, dropout 0.1): gradients equal the full batch to 1e-10.

Pages get different image sizes, so chunks hold different numbers of visual tokens and Qwen's flattened
``pixel_values`` / ``image_grid_thw`` must be split per image.
"""
from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from tests.helpers.grad_check import assert_close, gradcache_grads, grads_of, reference_grads, sgd
from retriever.model.encoder import EncoderConfig, RetrieverEncoder
from retriever.model.saved import load_encoder
from retriever.model.training_modes import LoraSettings
from retriever.model.tiny_checkpoints import build_tiny
from retriever.training.strategy import build_strategy
from retriever.training.gradcache import GradCache
from retriever.training.losses import ContrastiveLoss

SIZES = [(56, 84), (84, 56), (112, 112), (56, 56), (84, 112)]  # 5 pages: 3 positives + 2 hard negatives


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return build_tiny("qwen2_vl", tmp_path_factory.mktemp("qwen2_vl_dropout"), dropout=0.1)


def _load(path, head: str = "dense", arch: str = "qwen2_vl", **kw) -> RetrieverEncoder:
    config = EncoderConfig(backbone=arch, head=head, multi_dim=16,
                           matryoshka_dims=kw.pop("matryoshka_dims", None))
    return load_encoder(path, config, dtype=torch.float64, **kw).train()


def _batch(enc: RetrieverEncoder):
    gen = torch.Generator().manual_seed(0)
    images = [Image.fromarray((torch.rand(h, w, 3, generator=gen) * 255).to(torch.uint8).numpy()) for w, h in SIZES]
    q = enc.prepare_queries(["what is the revenue", "chart of sales", "who signed the letter"])
    p = enc.prepare_pages(images)
    positives = torch.eye(3, 5, dtype=torch.bool)
    positives[0, 3] = True  # two positives for the first query
    return q, p, positives


def _check(enc: RetrieverEncoder, chunk: int, rel: float = 1e-10, **loss_kw) -> None:
    loss = ContrastiveLoss(temperature=0.05, **loss_kw).double()
    q, p, positives = _batch(enc)
    want = reference_grads(copy.deepcopy(enc), copy.deepcopy(loss), q, p, positives, chunk, seed=11)
    got = gradcache_grads(enc, loss, q, p, positives, chunk, seed=11)
    assert_close(got, want, rel)


@pytest.mark.parametrize("chunk", [1, 2])
@pytest.mark.parametrize("head", ["dense", "multi", "multi_normalized", "matryoshka", "multi_matryoshka"])
def test_qwen2_vl_gradcache_equals_full_batch(qwen_dir, head: str, chunk: int) -> None:
    if head == "multi_normalized":
        _check(_load(qwen_dir, "multi"), chunk, normalize_query_length=True)
    elif head in ("matryoshka", "multi_matryoshka"):  # multi: each token vector's prefix, re-normalised
        enc = _load(qwen_dir, "multi" if head == "multi_matryoshka" else "dense", matryoshka_dims=[16, 8])
        _check(enc, chunk, matryoshka_dims=[16, 8], matryoshka_weights=[1.0, 0.5],
               normalize_query_length=head == "multi_matryoshka")
    else:
        _check(_load(qwen_dir, head), chunk)


def test_dropout_is_active_so_replay_matters(qwen_dir) -> None:
    enc = _load(qwen_dir, "dense")
    q, p, _ = _batch(enc)
    assert not torch.equal(enc(p), enc(p)) and not torch.equal(enc(q), enc(q))


@pytest.mark.parametrize("head", ["dense", "multi"])
def test_qwen2_5_vl_gradcache_equals_full_batch(tmp_path, head: str) -> None:
    path = build_tiny("qwen2_5_vl", tmp_path / "qwen2_5_vl", dropout=0.1)
    _check(_load(path, head, arch="qwen2_5_vl"), 2)


@pytest.mark.parametrize("arch", ["qwen3_vl", "qwen3_5", "gemma3", "modernvbert", "minicpmv4_6", "minicpmv4_7"])
@pytest.mark.parametrize("head", ["dense", "multi"])
def test_2026_families_gradcache_equals_full_batch(tmp_path, arch: str, head: str) -> None:
    """Qwen3-VL: DeepStack features (vision block outputs added to the first text layers) and interleaved M-RoPE;
    Qwen3.5: a Gated DeltaNet linear-attention layer (causal convolution, recurrent state) before full attention;
    Gemma3: bidirectional attention within an image, a sliding-window layer; ModernVBERT: a bidirectional encoder
    that unpads its batch; MiniCPM-V 4.6 / 4.7: pages cut into an overview and slices (crops of one page land in
    one chunk), 4.7's canvas M-RoPE over them, a Qwen3.5 text model; all under chunking (each chunk re-padded) and
    dropout replay."""
    path = build_tiny(arch, tmp_path / arch, dropout=0.1)
    _check(_load(path, head, arch=arch), 2)


@pytest.mark.parametrize("head", ["dense", "multi"])
def test_internvl3_5_gradcache_equals_full_batch(tmp_path, head: str) -> None:
    """InternVL3.5's transformers layout (InternViT with dropout + a Qwen3 text model) through the internvl adapter."""
    _check(_load(build_tiny("internvl3_5", tmp_path / "internvl3_5", dropout=0.1), head, arch="internvl"), 2)


@pytest.mark.parametrize("arch", ["qwen3_vl", "qwen3_5", "gemma3", "modernvbert", "minicpmv4_7"])
def test_2026_families_frozen_vision_reuse_equals_recompute(tmp_path, arch: str) -> None:
    """The cached tower output (with Qwen3-VL's DeepStack features) replayed gives the recomputed gradients."""
    enc = _load(build_tiny(arch, tmp_path / arch, dropout=0.1), "multi", arch=arch, freeze_vision=True)
    loss = ContrastiveLoss(temperature=0.05, normalize_query_length=True).double()
    q, p, positives = _batch(enc)
    want = gradcache_grads(copy.deepcopy(enc), copy.deepcopy(loss), q, p, positives, 2, seed=5)
    calls, patch_embed_calls = [], []
    enc.vision_module().register_forward_pre_hook(lambda *_: calls.append(1))
    next(enc.vision_module().children()).register_forward_hook(lambda *_: patch_embed_calls.append(1))
    assert_close(gradcache_grads(enc, loss, q, p, positives, 2, seed=5, reuse=True), want)
    assert len(calls) == 6 and len(patch_embed_calls) == 3  # 3 page chunks: tower computed in the first pass only


def test_qwen2_vl_gradient_checkpointing(qwen_dir) -> None:
    enc = _load(qwen_dir, "multi")
    enc.enable_activation_checkpointing()
    _check(enc, 2)


def test_qwen2_vl_lora(qwen_dir) -> None:
    enc = _load(qwen_dir, "dense", training_mode="lora", lora=LoraSettings(r=4, alpha=8, dropout=0.1))
    assert any("lora" in n for n, p in enc.named_parameters() if p.requires_grad)
    _check(enc, 2)


@pytest.mark.parametrize("head", ["dense", "multi"])
def test_qwen2_vl_frozen_vision_reuse_equals_recompute(qwen_dir, head: str) -> None:
    enc = _load(qwen_dir, head, freeze_vision=True)
    loss = ContrastiveLoss(temperature=0.05).double()
    q, p, positives = _batch(enc)
    want = gradcache_grads(copy.deepcopy(enc), copy.deepcopy(loss), q, p, positives, 2, seed=5)
    calls = []
    enc.vision_module().register_forward_pre_hook(lambda *_: calls.append(1))
    patch_embed_calls = []
    next(enc.vision_module().children()).register_forward_hook(lambda *_: patch_embed_calls.append(1))
    got = gradcache_grads(enc, loss, q, p, positives, 2, seed=5, reuse=True)
    assert_close(got, want)
    assert len(calls) == 6 and len(patch_embed_calls) == 3  # 3 page chunks: tower computed in the first pass only


def test_qwen2_vl_bf16_autocast_runs(qwen_dir) -> None:
    enc = load_encoder(qwen_dir, EncoderConfig(backbone="qwen2_vl", head="multi", multi_dim=16),
                                           dtype=torch.float32).train()
    q, p, positives = _batch(enc)
    strategy = build_strategy(enc, optimizer_factory=sgd)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = GradCache(enc, ContrastiveLoss(), strategy, 2).step(q, p, positives)
    assert torch.isfinite(torch.tensor(out["loss"]))
    assert all(torch.isfinite(g).all() for g in grads_of(enc).values())
