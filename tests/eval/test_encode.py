"""eval.encode: page embeddings in Parquet shards, in each index format, equal to the encoder's own (pooled,
quantized) vectors; resumable by shard; bad settings are one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.encode import main, read_shard
from retriever.index import IndexSettings
from retriever.index.muvera import encode_pages as muvera_pages
from retriever.index.pooling import pool_pages
from retriever.index.quantization import to_binary, to_int8
from retriever.model.encoder import EncoderConfig
from retriever.model.saved import load_encoder, save_encoder
from tests.helpers.cli import one_error_line
from tests.helpers.toy_retrieval import page_image

PAGES = 5


@pytest.fixture(scope="module")
def model_and_pages(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("encode")
    for head in ("multi", "dense"):
        save_encoder(load_encoder(tiny_model_dir("qwen2_vl"), EncoderConfig(backbone="qwen2_vl", head=head,
                                                                            multi_dim=16)), root / head)
    images = root / "images"
    images.mkdir()
    for i in range(PAGES):
        page_image(i).save(images / f"p{i}.png")
    return root, images


def encode(model: Path, images: Path, out: Path, *flags: str) -> dict:
    assert main(["--model", str(model), "--image_root", str(images), "--out", str(out), "--shard_size", "2",
                 *flags]) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["complete"] and index["pages"] == PAGES and [s["pages"] for s in index["shards"]] == [2, 2, 1]
    return index


def encoded(encoder, pages: range) -> list[torch.Tensor]:
    """The encoder's page vectors, shard by shard as the export encodes them (a real model's last bits depend on
    which pages share a batch)."""
    out = []
    for start in range(0, len(pages), 2):
        part = pages[start:start + 2]
        emb = encoder.encode_pages([page_image(i) for i in part], ids=[f"p{i}.png" for i in part])
        out.extend(emb if isinstance(emb, list) else emb.unbind(0))
    return out


def rows(out: Path) -> dict:
    shards = [read_shard(out / f"pages-{n:05d}.parquet") for n in range(3)]
    return {key: [v for s in shards for v in s[key]] for key in shards[0]}


@pytest.mark.parametrize("quantize", ["none", "int8", "binary"])
def test_shards_hold_the_encoders_vectors_in_each_format(model_and_pages, tmp_path, quantize) -> None:
    root, images = model_and_pages
    index = encode(root / "multi", images, tmp_path / "out", "--quantize", quantize, "--pool_factor", "2",
                   "--candidates", "muvera")
    encoder = load_encoder(root / "multi")
    ids = [f"p{i}.png" for i in range(PAGES)]
    want = pool_pages(encoded(encoder, range(PAGES)), 2)
    got = rows(tmp_path / "out")
    assert got["id"] == ids and got["n_vectors"] == [len(p) for p in want] and index["dim"] == 16
    for i, page in enumerate(want):
        if quantize == "none":
            assert torch.equal(got["vectors"][i], page.half().float())
        elif quantize == "int8":
            assert torch.equal(got["codes"][i], to_int8(page).codes.float())
            assert torch.equal(got["scales"][i], to_int8(page).scales)
        else:
            assert np.array_equal(got["bits"][i], to_binary(page).bits)
    fde = muvera_pages(want, IndexSettings().muvera).half().float()
    assert torch.equal(torch.stack(got["fde"]), fde)


def test_a_dense_model_writes_one_vector_per_page(model_and_pages, tmp_path) -> None:
    root, images = model_and_pages
    encode(root / "dense", images, tmp_path / "out")
    got = rows(tmp_path / "out")
    want = torch.stack(encoded(load_encoder(root / "dense"), range(PAGES)))
    assert got["n_vectors"] == [1] * PAGES
    assert torch.equal(torch.cat(got["vectors"]), want.half().float())


def test_a_rerun_writes_only_missing_shards(model_and_pages, tmp_path) -> None:
    root, images = model_and_pages
    out = tmp_path / "out"
    encode(root / "multi", images, out)
    kept = (out / "pages-00000.parquet").stat().st_mtime_ns
    (out / "pages-00001.parquet").unlink()
    encode(root / "multi", images, out)
    assert (out / "pages-00000.parquet").stat().st_mtime_ns == kept and (out / "pages-00001.parquet").exists()


def test_other_settings_into_the_same_out_or_compression_of_a_dense_model_is_one_line(model_and_pages, tmp_path,
                                                                                       capsys) -> None:
    root, images = model_and_pages
    out = tmp_path / "out"
    encode(root / "multi", images, out)
    base = ["--model", str(root / "multi"), "--image_root", str(images), "--out", str(out), "--shard_size", "2"]
    line = one_error_line(main, [*base, "--quantize", "int8"], capsys)
    assert line.startswith(f"error: {out / 'index.json'}: written with other settings than this run")
    line = one_error_line(main, ["--model", str(root / "dense"), "--image_root", str(images), "--out",
                                 str(tmp_path / "d"), "--quantize", "binary"], capsys)
    assert line.startswith(f"error: --quantize: {root / 'dense'} is a dense model")
