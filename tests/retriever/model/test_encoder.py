"""RetrieverEncoder on every tiny backbone: shapes, determinism, padding invariance, chunking, save/load,
vision-tower replay and bad input."""
from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from retriever.model.embeddings import MultiVector
from retriever.model.encoder import EncoderConfig, RetrieverEncoder, copy_module_output
from retriever.model.saved import load_encoder, save_encoder
from tests.helpers.tiny_models import ARCH_PARAMS

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
QUERIES = ["what is the revenue in 2021?", "a", "table of contents"]


def pages() -> list[Image.Image]:
    """Three noise images of different sizes / aspect ratios, hence different token counts."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
            ((60, 80), (100, 200), (90, 30))]


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    cache: dict = {}

    def get(arch: str, dtype: torch.dtype = torch.float32, **config) -> RetrieverEncoder:
        key = (arch, dtype, repr(sorted(config.items())))
        if key not in cache:
            cache[key] = load_encoder(
                tiny_model_dir(arch), EncoderConfig(backbone=arch, **config), dtype=dtype)
        enc = cache[key]
        enc.config.padding_side = "right"
        return enc

    return get


def rows(out: torch.Tensor | MultiVector) -> list[torch.Tensor]:
    """Per-example embeddings without padding: dense rows or the valid tokens of each example."""
    if isinstance(out, MultiVector):
        return [e[m] for e, m in zip(out.emb, out.mask)]
    return list(out)


def assert_rows_close(a: list[torch.Tensor], b: list[torch.Tensor], tol: float) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        assert (x - y).abs().max().item() <= tol


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_shapes_dtypes_determinism(arch, encoder):
    dense = encoder(arch, projection_dim=32)
    q = dense.encode_queries(QUERIES, batch_size=2)
    p = dense.encode_pages(pages(), batch_size=2)
    assert q.shape == (3, 32) and p.shape == (3, 32) and q.dtype == p.dtype == torch.float32
    torch.testing.assert_close(p.norm(dim=-1), torch.ones(3))
    assert torch.equal(p, dense.encode_pages(pages(), batch_size=2))  # deterministic
    multi = encoder(arch, head="multi", multi_dim=16)
    mq, mp = multi.encode_queries(QUERIES), multi.encode_pages(pages())
    assert len(mq) == 3 and len(mp) == 3
    assert all(t.shape[-1] == 16 and t.dtype == torch.float32 for t in mq + mp)
    assert mp[1].shape[0] > mq[1].shape[0]  # pages carry their image tokens
    f64 = encoder(arch, torch.float64)
    assert f64(f64.prepare_pages(pages()[:2])).dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("arch", ARCH_PARAMS)
@pytest.mark.parametrize("head", ["dense", "multi"])
def test_padding_invariance(arch, dtype, head, encoder):
    """An example's embedding does not depend on its batch or on the padding side."""
    enc = encoder(arch, dtype, head=head, pooling="mean")
    tol = TOLERANCE[dtype]
    alone = {"pages": [rows(enc(enc.prepare_pages([img])))[0] for img in pages()],
             "queries": [rows(enc(enc.prepare_queries([q])))[0] for q in QUERIES]}
    for side in ("left", "right"):
        enc.config.padding_side = side
        assert_rows_close(rows(enc(enc.prepare_pages(pages()))), alone["pages"], tol)
        assert_rows_close(rows(enc(enc.prepare_queries(QUERIES))), alone["queries"], tol)


@pytest.mark.parametrize("arch", ARCH_PARAMS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_split_inputs_concatenates_to_whole_batch(arch, side, encoder):
    enc = encoder(arch, torch.float64, head="multi")
    enc.config.padding_side = side
    for batch in (enc.prepare_pages(pages()), enc.prepare_queries(QUERIES)):
        whole = rows(enc(batch))
        for chunk_size in (1, 2):
            chunks = enc.split_inputs(batch, chunk_size)
            assert [c["input_ids"].shape[0] for c in chunks] == [chunk_size] * (3 // chunk_size) + \
                [1] * (3 % chunk_size if chunk_size > 1 else 0)
            assert_rows_close([r for c in chunks for r in rows(enc(c))], whole, 1e-10)
        single = enc.split_inputs(batch, 1)
        assert all(c["attention_mask"][:, [0, -1]].all() for c in single)  # padding trimmed per chunk


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_vision_output_can_be_cached_and_replayed(arch, encoder):
    """The vision module's output depends only on the pixels: replaying it reproduces the embeddings."""
    enc = encoder(arch, torch.float64)
    batch = enc.prepare_pages(pages())
    vision = enc.vision_module()
    assert any(p is q for p in vision.parameters() for q in enc.hf_model.parameters())
    recorded = []
    handle = vision.register_forward_hook(lambda module, args, output: recorded.append(copy_module_output(output)))
    first = enc(batch)
    handle.remove()
    assert len(recorded) == 1
    vision.forward = lambda *args, **kwargs: copy_module_output(recorded[0])
    try:
        replayed = enc(batch)
    finally:
        del vision.forward
    assert torch.equal(first, replayed)


def test_load_encoder_settings_precedence(tiny_model_dir, tmp_path, caplog):
    """One loader: ``settings`` build fresh heads on a plain checkpoint only; a saved directory keeps its own
    config; ``override`` replaces a field whatever the source (a changed head starts fresh, with a warning)."""
    fresh = load_encoder(tiny_model_dir("qwen2_vl"), settings={"head": "multi", "multi_dim": 16}, dtype="float64")
    assert fresh.multi_vector and fresh.config.multi_dim == 16 and fresh.dtype == torch.float64
    assert not fresh.training
    save_encoder(fresh, tmp_path)
    kept = load_encoder(tmp_path, settings={"head": "dense"})
    assert kept.multi_vector and kept.config == fresh.config
    with caplog.at_level("WARNING"):
        dense = load_encoder(tmp_path, override={"head": "dense"})
    assert not dense.multi_vector and "starting with fresh heads" in caplog.text


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_save_load_round_trip(arch, encoder, tmp_path):
    enc = encoder(arch, torch.float64, projection_dim=16, matryoshka_dims=[4, 8], query_augmentation_tokens=3)
    torch.nn.init.normal_(enc.head.projection.weight)
    save_encoder(enc, tmp_path)
    loaded = load_encoder(tmp_path, dtype=torch.float64)
    assert loaded.config == enc.config
    for batch in (enc.prepare_pages(pages()), enc.prepare_queries(QUERIES)):
        assert torch.equal(enc(batch), loaded(batch))
    assert not any(p.suffix in {".bin", ".pt", ".pth"} for p in tmp_path.iterdir())


def test_query_prefix_and_augmentation_tokens(encoder):
    plain = encoder("qwen2_vl")
    aug = encoder("qwen2_vl", query_augmentation_tokens=10)
    assert aug.query_text("x") == "Query: x" + aug.backbone.tokenizer.pad_token * 10
    n_plain = plain.prepare_queries(["x"])["attention_mask"].sum()
    assert aug.prepare_queries(["x"])["attention_mask"].sum() == n_plain + 10


def test_max_visual_tokens_caps_resolution(encoder):
    big = Image.new("RGB", (400, 300), "white")
    full = encoder("qwen2_vl").prepare_pages([big])
    capped = encoder("qwen2_vl", max_visual_tokens=4).prepare_pages([big])
    image_id = encoder("qwen2_vl").hf_model.config.image_token_id
    assert (capped["input_ids"] == image_id).sum() <= 4 < (full["input_ids"] == image_id).sum()


def test_unknown_backbone_lists_supported(tiny_model_dir):
    with pytest.raises(ValueError, match="supported: gemma3, idefics3, internvl, minicpm_v, minicpmv4_6, minicpmv4_7, "
                                         "modernvbert, paligemma, qwen2_5_vl, qwen2_vl, qwen3_5, qwen3_vl"):
        load_encoder(tiny_model_dir("qwen2_vl"), EncoderConfig(backbone="llava"))


def test_remote_code_backbone_needs_the_flag(tiny_model_dir):
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        load_encoder(tiny_model_dir("qwen2_vl"), EncoderConfig(backbone="minicpm_v"))


def test_undecodable_image_names_its_id(encoder):
    enc = encoder("qwen2_vl")
    png = io.BytesIO()
    pages()[0].save(png, format="PNG")
    with pytest.raises(ValueError, match="page doc7-p3: cannot decode image"):
        enc.prepare_pages([png.getvalue(), b"not an image"], ids=["doc7-p2", "doc7-p3"])
    truncated = Image.open(io.BytesIO(png.getvalue()[:200]))
    with pytest.raises(ValueError, match="page #1: cannot decode image"):
        enc.encode_pages([pages()[0], truncated])


@pytest.mark.parametrize("missing", ["model.safetensors", "tokenizer.json", "preprocessor_config.json",
                                     "config.json"])
def test_checkpoint_missing_file_is_named(missing, tiny_model_dir, tmp_path):
    copy = shutil.copytree(tiny_model_dir("paligemma"), tmp_path / "ckpt")
    (copy / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing.replace(".", r"\.")):
        load_encoder(copy)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*neither a checkpoint directory"):
        load_encoder(tmp_path / "nowhere")


def test_saved_dir_missing_heads_is_named(encoder, tmp_path):
    save_encoder(encoder("paligemma"), tmp_path)
    (tmp_path / "heads.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"heads\.safetensors"):
        load_encoder(tmp_path)


def test_maxsim_of_encoder_outputs_matches_naive_loop(encoder):
    scoring = pytest.importorskip("retriever.scoring")
    enc = encoder("qwen2_vl", torch.float64, head="multi")
    with torch.no_grad():
        q, d = enc(enc.prepare_queries(QUERIES)), enc(enc.prepare_pages(pages()))
    scores = scoring.maxsim(q.emb, q.mask, d.emb, d.mask)
    for i, qi in enumerate(rows(q)):
        for j, dj in enumerate(rows(d)):
            naive = sum(max(float(a @ b) for b in dj) for a in qi)
            assert abs(scores[i, j].item() - naive) < 1e-10


@pytest.mark.shared_pdfs
@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_real_pdf_pages(arch, shared_pdfs, encoder):
    """Pages rendered from real PDFs (a tall page, a tiny one, a scan) encode under a resolution cap."""
    fitz = pytest.importorskip("fitz")
    images = []
    for name in ("skinnypage.pdf", "small_page_size.pdf", "olmo-page-1.pdf"):
        path = shared_pdfs / "olmocr-gnarly" / name
        if path.exists():
            with fitz.open(path) as doc:
                pix = doc[0].get_pixmap(dpi=24)
                images.append(Image.frombytes("RGB", (pix.width, pix.height), pix.samples))
    if not images:
        pytest.skip("none of the chosen PDFs is present")
    enc = encoder(arch, max_visual_tokens=64, pooling="mean")
    emb = enc.encode_pages(images, batch_size=2)
    assert emb.shape == (len(images), 64) and torch.isfinite(emb).all()
    alone = torch.cat([enc.encode_pages([image]) for image in images])
    assert (emb - alone).abs().max() < 1e-5


@pytest.mark.parametrize("head", ["dense", "multi"])
def test_truncate_dim_encodes_the_renormalised_matryoshka_prefix(encoder, head: str) -> None:
    """``truncate_dim`` (``--dim`` of the evaluators and the miner) gives the first N coordinates of each embedding,
    re-normalised, for queries and pages; zero padding of multi-vector pages stays zero."""
    full = encoder("qwen2_vl", torch.float64, head=head, projection_dim=16, multi_dim=16)
    cut = encoder("qwen2_vl", torch.float64, head=head, projection_dim=16, multi_dim=16, truncate_dim=4)
    cut.load_state_dict(full.state_dict())
    for encode in ("encode_queries", "encode_pages"):
        items = QUERIES if encode == "encode_queries" else pages()
        want = [torch.nn.functional.normalize(row[..., :4], dim=-1) for row in getattr(full, encode)(items)]
        got = list(getattr(cut, encode)(items))
        assert all(g.shape == w.shape and torch.allclose(g, w, rtol=1e-5, atol=1e-6)  # float32 outputs
                   for g, w in zip(got, want))


def test_truncate_dim_beyond_the_embedding_is_refused(encoder) -> None:
    with pytest.raises(ValueError, match="truncate_dim 32 is not in 1..16"):
        encoder("qwen2_vl", head="multi", multi_dim=16, truncate_dim=32)
