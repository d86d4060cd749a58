"""Video clips as documents on the Qwen-VL backbones: a clip is its frames as images, each in its own vision span;
its embedding does not depend on its batch or chunking (float64), GradCache stays exact with clips in the batch,
and a backbone that does not take clips says so."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep.errors import InputError
from data_prep.images import Clip
from retriever.model.encoder import EncoderConfig
from retriever.model.saved import load_encoder
from retriever.model.tiny_checkpoints import build_tiny
from retriever.training.losses import ContrastiveLoss
from tests.helpers.grad_check import assert_close, gradcache_grads, reference_grads


def image(seed: int, h: int = 56, w: int = 84) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def items() -> list:
    return [image(0), Clip((image(1), image(2, 84, 56), image(3))), image(4, 84, 84), Clip((image(5), image(6)))]


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen3_5"])
def test_a_clip_is_its_frames_as_images_and_independent_of_its_batch(arch, tiny_model_dir) -> None:
    enc = load_encoder(tiny_model_dir(arch), EncoderConfig(backbone=arch, head="multi"), dtype=torch.float64)
    batch = enc.prepare_pages(items())
    assert enc.backbone.images_per_example(batch) == [1, 3, 1, 2]  # one image span per frame
    whole = enc(batch)
    rows = [whole.emb[i][whole.mask[i]] for i in range(4)]
    for i, item in enumerate(items()):
        alone = enc(enc.prepare_pages([item]))
        assert (alone.emb[0][alone.mask[0]] - rows[i]).abs().max() < 1e-10
    chunks = [enc(c) for c in enc.split_inputs(batch, 2)]
    chunked = [c.emb[j][c.mask[j]] for c in chunks for j in range(c.emb.shape[0])]
    assert all((a - b).abs().max() < 1e-10 for a, b in zip(chunked, rows))


def test_gradcache_with_clips_equals_the_full_batch(tmp_path) -> None:
    enc = load_encoder(build_tiny("qwen2_vl", tmp_path / "m", dropout=0.1),
                       EncoderConfig(backbone="qwen2_vl", head="multi", multi_dim=16), dtype=torch.float64).train()
    loss = ContrastiveLoss(temperature=0.05).double()
    q = enc.prepare_queries(["a dog", "two frames of a street", "a chart"])
    p = enc.prepare_pages([Clip((image(1), image(2))), image(3), Clip((image(4), image(5, 84, 84), image(6))),
                           image(7), image(8)])
    positives = torch.eye(3, 5, dtype=torch.bool)
    want = reference_grads(copy.deepcopy(enc), copy.deepcopy(loss), q, p, positives, 2, seed=11)
    assert_close(gradcache_grads(enc, loss, q, p, positives, 2, seed=11), want, 1e-10)


def test_a_backbone_without_clips_names_the_item(tiny_model_dir) -> None:
    enc = load_encoder(tiny_model_dir("paligemma"))
    with pytest.raises(InputError, match="clip-7: a video clip; backbone 'paligemma' does not take clips"):
        enc.prepare_pages([Clip((image(0), image(1)))], ids=["clip-7"])
