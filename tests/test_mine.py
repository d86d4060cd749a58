"""Hard-negative mining: FAISS / MaxSim search equals brute force; negatives exclude positives; CLI end to end."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from retriever.mine import choose_negatives, main, search_dense, search_multi
from retriever.model.scoring import maxsim


def test_dense_search_matches_brute_force():
    torch.manual_seed(0)
    queries, pages = torch.randn(7, 16), torch.randn(50, 16)
    found = search_dense(queries, pages, 5, "Flat")
    assert torch.equal(found, (queries @ pages.T).topk(5, dim=1).indices)


def test_multi_search_matches_brute_force():
    torch.manual_seed(0)
    queries = [torch.randn(n, 8, dtype=torch.float64) for n in (3, 5, 2)]
    pages = [torch.randn(n, 8, dtype=torch.float64) for n in (4, 9, 1, 6, 3, 7)]
    found = search_multi(queries, pages, 3, block=2)
    for q, row in zip(queries, found):
        scores = torch.stack([maxsim(q[None], torch.ones(1, len(q), dtype=torch.bool), p[None],
                                     torch.ones(1, len(p), dtype=torch.bool))[0, 0] for p in pages])
        assert row.tolist() == scores.topk(3).indices.tolist()


def test_choose_negatives_skips_positives_and_top():
    assert choose_negatives(["a", "p", "b", "c", "d"], ["p"], 2, 1) == ["b", "c"]
    assert choose_negatives(["p"], ["p"], 3, 0) == []


def test_cli_end_to_end(tiny_model_dir, tmp_path):
    from retriever.model.encoder import EncoderConfig
    from retriever.model.saved import load_encoder, save_encoder

    root = tmp_path / "images"
    root.mkdir()
    for i in range(6):
        Image.new("RGB", (56, 56), (40 * i, 20, 200 - 30 * i)).save(root / f"p{i}.png")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"page {i}", "pos": [f"p{i}.png"], "source": "t"}) + "\n"
                             for i in range(4)))
    model = tmp_path / "model"
    save_encoder(load_encoder(tiny_model_dir("qwen2_vl"), EncoderConfig(backbone="qwen2_vl")), model)
    out = tmp_path / "mined.jsonl"
    args = ["--model", str(model), "--train_data", str(pairs), "--image_root", str(root), "--out", str(out),
            "--num_negatives", "3", "--shard_size", "4"]
    main(args)
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["source"] for line in first] == ["t"] * 4
    for i, line in enumerate(first):
        assert len(line["neg"]) == 3 and f"p{i}.png" not in line["neg"]
        assert len(set(line["neg"])) == 3
    main(args)  # the second run reads the cached page embeddings and must give the same answer
    assert [json.loads(line) for line in out.read_text().splitlines()] == first
    assert len(list((tmp_path / "mined.jsonl.cache").glob("pages-*.safetensors"))) == 2
