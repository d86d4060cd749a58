"""Hard-negative mining: the selection rules on planted scores; no positive or near duplicate is ever mined; the CLI
end to end, cached, on 1 and 2 ranks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from retriever.mine import main
from retriever.mining.duplicates import NearDuplicates, average_hash
from retriever.mining.selection import Candidate, MiningRules, select_negatives
from retriever.mining.statistics import MiningStats
from retriever.page_sources import ImageFolder, PageResolver
from tests.helpers.paths import REPO_ROOT

REPO = REPO_ROOT


# planted scores: positive "p" scores 10; candidates in rank order with clear gaps between them
PLANTED = [Candidate("a", 9.9, 1), Candidate("p", 10.0, 2), Candidate("b", 9.0, 3), Candidate("c", 8.0, 4),
           Candidate("d", 6.0, 5), Candidate("e", 4.0, 6), Candidate("f", 2.0, 7)]


def _negatives(**settings) -> list[str]:
    rules = MiningRules(**{"num_negatives": 3, **settings})
    return [c.page for c in select_negatives(PLANTED, ["p"], [10.0], rules, 0).negatives]


def test_window_and_margin_rules_on_planted_scores():
    assert _negatives() == ["a", "b", "c"]
    assert _negatives(range_min=1) == ["b", "c", "d"]  # the window counts non-positives only
    assert _negatives(range_min=1, range_max=3) == ["b", "c"]
    assert _negatives(relative_margin=0.05) == ["b", "c", "d"]  # > 9.5 dropped
    assert _negatives(relative_margin=0.25) == ["d", "e", "f"]  # > 7.5 dropped
    assert _negatives(absolute_margin=3.0) == ["d", "e", "f"]  # > 7 dropped
    assert _negatives(max_score=5.0) == ["e", "f"]
    selection = select_negatives(PLANTED, ["p"], [10.0], MiningRules(num_negatives=3, range_min=1,
                                                                     relative_margin=0.25), 0)
    assert dict(selection.removed) == {"positive": 1, "window": 1, "relative_margin": 2}
    assert [c.rank for c in selection.negatives] == [5, 6, 7]


def test_lowest_positive_score_bounds_the_margin():
    rules = MiningRules(num_negatives=2, absolute_margin=1.95)
    selection = select_negatives(PLANTED, ["p", "a"], [10.0, 9.9], rules, 0)
    assert selection.pos_score == 9.9  # with the higher positive (10) as bound, c (8.0 < 8.05) would survive
    assert [c.page for c in selection.negatives] == ["d", "e"]


def test_random_sampling_is_seeded_per_query_and_kept_in_rank_order():
    rules = MiningRules(num_negatives=2, sampling="random", seed=5)
    draws = {tuple(c.page for c in select_negatives(PLANTED, ["p"], [10.0], rules, q).negatives) for q in range(12)}
    assert len(draws) > 1  # different queries draw differently
    again = select_negatives(PLANTED, ["p"], [10.0], rules, 3).negatives
    assert again == select_negatives(PLANTED, ["p"], [10.0], rules, 3).negatives
    assert [c.rank for c in again] == sorted(c.rank for c in again)


def test_statistics_count_short_queries_and_histograms():
    stats = MiningStats(num_negatives=3)
    stats.add(select_negatives(PLANTED, ["p"], [10.0], MiningRules(num_negatives=3, max_score=5.0), 0))
    stats.add(select_negatives(PLANTED, ["p"], [10.0], MiningRules(num_negatives=3), 1))
    summary = stats.to_json()
    assert summary["queries_short_of_negatives"] == 1 and summary["negatives_mined"] == 5
    assert summary["removed_by_rule"]["max_score"] == 4
    assert sum(summary["histograms"]["positives"]) == 2 and sum(summary["histograms"]["negatives"]) == 5
    assert "fewer than 3" in stats.report()


def _page(text: str, shade: int) -> Image.Image:
    image = Image.new("RGB", (64, 64), (shade, shade, 255 - shade))
    ImageDraw.Draw(image).rectangle((8, 8, 20 + shade // 8, 40), fill="black")
    ImageDraw.Draw(image).text((30, 30), text, fill="white")
    return image


def test_near_duplicates_by_pdf_page_bytes_and_hash(tmp_path):
    _page("x", 0).save(tmp_path / "pos.png")
    (tmp_path / "copy.png").write_bytes((tmp_path / "pos.png").read_bytes())  # same bytes, another id
    _page("x", 0).save(tmp_path / "rerender.png", compress_level=1)  # same pixels, other bytes
    _page("other", 200).save(tmp_path / "other.png")
    _page("y", 120).save(tmp_path / "samepdf.png")
    resolver = PageResolver([ImageFolder(tmp_path)])
    pdf = {"pos.png": ("sha", 3), "samepdf.png": ("sha", 3), "other.png": ("sha", 4)}
    assert (tmp_path / "rerender.png").read_bytes() != (tmp_path / "pos.png").read_bytes()
    plain = NearDuplicates(resolver, pdf).test_for(["pos.png"])
    assert [plain(p) for p in ("copy.png", "samepdf.png", "rerender.png", "other.png")] == [True, True, False, False]
    hashed = NearDuplicates(resolver, {}, same_bytes=False, hash_distance=2).test_for(["pos.png"])
    assert [hashed(p) for p in ("copy.png", "rerender.png", "other.png")] == [True, True, False]
    assert average_hash(_page("x", 0)) != average_hash(_page("other", 200))


@pytest.fixture(scope="module")
def mining_data(tmp_path_factory, tiny_model_dir):
    from retriever.model.encoder import EncoderConfig
    from retriever.model.saved import load_encoder, save_encoder

    root = tmp_path_factory.mktemp("mining")
    images = root / "images"
    images.mkdir()
    for i in range(8):
        _page(f"p{i}", 30 * i).save(images / f"p{i}.png")
    (images / "p0copy.png").write_bytes((images / "p0.png").read_bytes())
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"page {i}", "pos": [f"p{i}.png"], "source": "t"}) + "\n"
                             for i in range(5)))
    save_encoder(load_encoder(tiny_model_dir("qwen2_vl"), EncoderConfig(backbone="qwen2_vl")), root / "model")
    save_encoder(load_encoder(tiny_model_dir("qwen2_vl"), EncoderConfig(backbone="qwen2_vl", head="multi",
                                                                        multi_dim=16)), root / "multi")
    return root


def _mine_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(root / "model"), "--train_data", str(root / "pairs.jsonl"), "--image_root",
            str(root / "images"), "--out", str(out), "--num_negatives", "3", "--shard_size", "4",
            "--sampling", "random", "--seed", "1", *extra]


def test_cli_end_to_end_records_scores_and_never_mines_positives(mining_data, tmp_path):
    out = tmp_path / "mined.jsonl"
    main(_mine_args(mining_data, out))
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["source"] for line in first] == ["t"] * 5
    for i, line in enumerate(first):
        assert len(line["neg"]) == len(set(line["neg"])) == 3
        assert f"p{i}.png" not in line["neg"] and (i != 0 or "p0copy.png" not in line["neg"])
        assert line["neg_ranks"] == sorted(line["neg_ranks"]) and len(line["neg_scores"]) == 3
        assert isinstance(line["pos_score"], float)
    stats = json.loads((tmp_path / "mined.jsonl.stats.json").read_text())
    assert stats["queries"] == 5 and stats["removed_by_rule"]["positive"] == 5
    assert stats["removed_by_rule"]["near_duplicate"] == 1  # p0copy.png, for query 0
    main(_mine_args(mining_data, out))  # the second run reads the cached page embeddings: same answer
    assert [json.loads(line) for line in out.read_text().splitlines()] == first
    assert len(list((tmp_path / "mined.jsonl.cache").glob("pages-*.safetensors"))) == 3


def test_compressed_index_candidates_mine_like_exact_search_and_report_their_recall(mining_data, tmp_path):
    """A multi-vector model: MUVERA candidates (the default rerank depth covers this small corpus) mine the same
    negatives as brute-force MaxSim, and the statistics report the candidate search's recall of the exact top."""
    model = ["--model", str(mining_data / "multi")]
    main([*_mine_args(mining_data, tmp_path / "exact.jsonl"), *model, "--multi_search", "exact"])
    main([*_mine_args(mining_data, tmp_path / "muvera.jsonl"), *model, "--candidates", "muvera", "--pool_factor", "2",
          "--candidate_recall_sample", "4"])
    assert (tmp_path / "muvera.jsonl").read_text() == (tmp_path / "exact.jsonl").read_text()
    stats = json.loads((tmp_path / "muvera.jsonl.stats.json").read_text())
    assert stats["candidate_recall"]["queries"] == 4 and stats["candidate_recall"]["mean"] == 1.0
    assert "candidate_recall" not in json.loads((tmp_path / "exact.jsonl.stats.json").read_text())


def test_another_model_on_the_same_out_encodes_again(mining_data, tmp_path, caplog):
    """Mining with model B into the --out of a run with model A does not reuse A's cached page embeddings: B's
    output is a fresh run of B's, and a warning names what changed."""
    from retriever.model.saved import load_encoder, save_encoder

    other = tmp_path / "model_b"  # A's weights, pooled otherwise: other embeddings of the same size
    save_encoder(load_encoder(mining_data / "model", override={"pooling": "mean"}), other)
    fresh = tmp_path / "fresh.jsonl"
    main([*_mine_args(mining_data, fresh), "--model", str(other)])
    out = tmp_path / "mined.jsonl"
    main(_mine_args(mining_data, out))
    first = out.read_text()
    with caplog.at_level("WARNING", logger="retriever.mine"):
        main([*_mine_args(mining_data, out), "--model", str(other)])
    assert out.read_text() == fresh.read_text() != first
    assert "pooling 'last' (this run: 'mean')" in caplog.text and "encoding the pages again" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="retriever.mine"):
        main([*_mine_args(mining_data, out), "--model", str(other)])  # the same model again: the cache is reused
    assert out.read_text() == fresh.read_text() and "encoding the pages again" not in caplog.text


@pytest.mark.distributed
def test_two_ranks_mine_the_same_file_as_one(mining_data, tmp_path):
    single, double = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    main(_mine_args(mining_data, single, "--cache_dir", str(tmp_path / "cache1")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(31500 + os.getpid() % 1000), "-m", "retriever.mine",
           *_mine_args(mining_data, double, "--cache_dir", str(tmp_path / "cache2"))]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    one, two = single.read_text().splitlines(), double.read_text().splitlines()
    assert [json.loads(a)["neg"] for a in one] == [json.loads(b)["neg"] for b in two]
    for a, b in zip(one, two):
        assert json.loads(a)["neg_scores"] == pytest.approx(json.loads(b)["neg_scores"], rel=1e-5)
    assert json.loads((tmp_path / "two.jsonl.stats.json").read_text())["queries"] == 5
    assert not list(tmp_path.glob("two.jsonl.part-*"))
