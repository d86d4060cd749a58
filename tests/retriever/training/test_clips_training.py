"""A tiny Qwen2-VL trains on mixed page and clip pairs (clips from data_prep.videos in a page store, pages in an image
folder), mines hard negatives among pages and clips, and is evaluated text->video by the native evaluator on a store
of clips."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.retrieval import main as evaluate
from retriever.training.logs import read_log
from tests.helpers.training_runs import run_train, train_args
from tests.helpers.videos import write_clip

pytest.importorskip("av")


def test_mixed_pairs_train_and_text_to_video_evaluates(tiny_model_dir, train_data, tmp_path: Path) -> None:
    from data_prep.videos import main as videos

    for i in range(6):
        write_clip(tmp_path / "videos" / f"clip{i}.mp4", 1.0, colour=40 * i)
    assert videos(["--videos", str(tmp_path / "videos"), "--out", str(tmp_path / "clips"), "--fps", "2"]) == 0
    lines = [{"query": f"clip number {i}", "pos": [f"clip{i}"], "neg": [f"clip{(i + 1) % 6}"]} for i in range(6)]
    lines += [{"query": f"what is on page {i}?", "pos": [f"page{i}.png"], "neg": [f"page{i + 1}.png"]}
              for i in range(6)]
    pairs = tmp_path / "mixed.jsonl"
    pairs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "run"
    args = train_args(tiny_model_dir("qwen2_vl"), train_data, out, "--max_steps", "2", "--page_store",
                      str(tmp_path / "clips"), "--head", "multi")
    args[args.index("--train_data") + 1] = str(pairs)
    result = run_train(args)
    assert result.returncode == 0, result.stderr[-4000:]
    assert sorted(read_log(out / "log.jsonl")) == [1, 2]
    from retriever.mine import main as mine

    mine(["--model", str(out / "final"), "--train_data", str(pairs), "--page_store", str(tmp_path / "clips"),
          "--image_root", str(train_data / "images"), "--corpus", "pairs", "--out", str(tmp_path / "mined.jsonl"),
          "--num_negatives", "2", "--multi_search", "exact"])
    mined = [json.loads(line) for line in (tmp_path / "mined.jsonl").read_text().splitlines()]
    assert all(len(m["neg"]) == 2 and m["pos"][0] not in m["neg"] for m in mined)
    assert any(n.startswith("clip") for m in mined for n in m["neg"])  # clips are candidates like pages
    test = tmp_path / "t2v.jsonl"
    test.write_text("".join(json.dumps(line) + "\n" for line in lines[:6]))
    assert evaluate(["--model", str(out / "final"), "--tasks", str(test), "--page_store", str(tmp_path / "clips"),
                     "--out", str(tmp_path / "eval"), "--k", "1,5"]) == 0
    metrics = json.loads((tmp_path / "eval" / "t2v" / "metrics.json").read_text())
    assert len(metrics["per_query"]) == 6 and 0 <= metrics["aggregate"]["recall_at_5"] <= 1
    run = (tmp_path / "eval" / "t2v" / "run.trec").read_text().splitlines()
    assert {line.split()[2] for line in run} <= {f"clip{i}" for i in range(6)} and len(run) == 6 * 5  # clips ranked
