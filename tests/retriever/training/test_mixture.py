"""Multi-source training data: source specs, single-source batches, weights, determinism, and an exact resume
after kill -9 with per-source losses in the log."""
from __future__ import annotations

import json
from collections import Counter

import pytest
from PIL import Image, ImageDraw

from retriever.pairs import Pair
from retriever.training.logs import read_log
from retriever.training.mixture import Source, TrainingData, parse_sources
from tests.helpers.training_runs import kill_at_checkpoint, run_train


def _data(sizes: dict[str, int], weights: dict[str, float] | None = None) -> TrainingData:
    parts = [[Pair(f"{name} q{i}", (f"{name}/p{i}",), (f"{name}/p{(i + 1) % n}",)) for i in range(n)]
             for name, n in sizes.items()]
    sources = [Source(f"{name}.jsonl", name, (weights or {}).get(name, 1.0)) for name in sizes]
    return TrainingData.from_parts(sources, parts)


def test_source_specs_and_mixture_files(tmp_path):
    assert parse_sources(["a.jsonl", "dir/b.jsonl:0.5"]) == [Source("a.jsonl", "a", 1.0),
                                                             Source("dir/b.jsonl", "b", 0.5)]
    assert [s.name for s in parse_sources(["x/a.jsonl", "y/a.jsonl:2"])] == ["a", "a_2"]
    (tmp_path / "mix.yaml").write_text("sources:\n  - {path: a.jsonl, weight: 3, name: docs}\n  - path: /abs/b.jsonl\n")
    assert parse_sources([str(tmp_path / "mix.yaml")]) == [Source(str(tmp_path / "a.jsonl"), "docs", 3.0),
                                                          Source("/abs/b.jsonl", "b", 1.0)]
    (tmp_path / "mix.json").write_text(json.dumps([{"path": "c.jsonl", "weight": 0}]))
    with pytest.raises(ValueError, match="source 0: a source weight must be a positive number"):
        parse_sources([str(tmp_path / "mix.json")])


def test_homogeneous_batches_hold_one_source_and_weights_scale_counts():
    data = _data({"docs": 40, "slides": 40}, {"slides": 0.5})
    plan = data.plan_epoch(4, 1, seed=7, epoch=0, homogeneous=True)
    sources = [{data.sources[data.source_of(q.pair_index)].name for q in batch} for batch in plan]
    assert all(len(names) == 1 for names in sources)
    counts = Counter(names.pop() for names in sources)
    assert counts["docs"] == 10 and counts["slides"] == 5
    assert [q.pair_index for b in plan for q in b] == [q.pair_index for b in data.plan_epoch(4, 1, 7, 0) for q in b]
    other = data.plan_epoch(4, 1, seed=7, epoch=1)
    assert [q.pair_index for b in plan for q in b] != [q.pair_index for b in other for q in b]


def test_mixed_batches_mix_sources_and_one_source_is_plain_plan_epoch():
    from retriever.training.batching import plan_epoch

    data = _data({"docs": 40, "slides": 40}, {"docs": 2.0})
    plan = data.plan_epoch(8, 1, seed=1, epoch=0, homogeneous=False)
    assert any(len({data.source_of(q.pair_index) for q in batch}) == 2 for batch in plan)
    drawn = Counter(data.source_of(q.pair_index) for batch in plan for q in batch)
    assert drawn[0] > 1.5 * drawn[1]  # weight 2 against weight 1
    single = _data({"docs": 30})
    assert single.plan_epoch(4, 1, 3, 2) == plan_epoch(single.pairs, 4, 1, 3, 2)


def test_two_sources_resume_after_kill_replays_the_same_batches(tiny_model_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name, n in (("docs", 12), ("slides", 12)):
        lines = []
        for i in range(n):
            image = Image.new("RGB", (56, 56), (20 * i % 256, 90 if name == "docs" else 200, 7 * i % 256))
            ImageDraw.Draw(image).text((4, 20), f"{name}{i}", fill="black")
            image.save(images / f"{name}{i}.png")
            lines.append(json.dumps({"query": f"{name} page {i}", "pos": [f"{name}{i}.png"]}))
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")

    def args(out):
        return ["--model_name_or_path", str(tiny_model_dir("qwen2_vl")), "--output_dir", str(out), "--train_data",
                str(tmp_path / "docs.jsonl"), f"{tmp_path / 'slides.jsonl'}:0.5", "--image_root", str(images),
                "--per_device_train_batch_size", "3", "--gc_chunk_size", "2", "--training_mode", "lora",
                "--learning_rate", "1e-3", "--seed", "3", "--dataloader_num_workers", "0", "--report_to", "none",
                "--disable_tqdm", "--max_steps", "5", "--save_steps", "2", "--save_total_limit", "5"]

    reference = run_train(args(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr[-4000:]
    out = tmp_path / "killed"
    kill_at_checkpoint(args(out), out)
    resumed = run_train(args(out) + ["--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    expected, got = read_log(tmp_path / "reference" / "log.jsonl"), read_log(out / "log.jsonl")
    assert sorted(got) == sorted(expected) == list(range(1, 6))
    for step, record in expected.items():
        per_source = [key for key in record if key.startswith("loss_")]
        assert len(per_source) == 1 and record[per_source[0]] == record["loss"]  # one source per batch
        assert got[step]["pages_sha1"] == record["pages_sha1"], f"step {step} drew other pages"
        assert got[step][per_source[0]] == pytest.approx(record[per_source[0]], rel=1e-5, abs=1e-6)
    assert {key for record in expected.values() for key in record if key.startswith("loss_")} == \
        {"loss_docs", "loss_slides"}
