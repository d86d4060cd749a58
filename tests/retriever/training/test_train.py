"""End-to-end training with a tiny Qwen2-VL: smoke, exact resume after kill -9, two "nodes", bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from retriever.training.logs import read_log
from tests.helpers.paths import REPO_ROOT
from tests.helpers.training_runs import kill_at_checkpoint, run_train, train_args, train_env


def test_chinese_pairs_train_end_to_end(tiny_model_dir, train_data, tmp_path):
    """Queries in Chinese go through the checkpoint's tokenizer like any other: a short run trains on them and the
    trained encoder embeds a Chinese query."""
    pairs = tmp_path / "zh.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"第{i}页上有什么内容？", "pos": [f"page{i}.png"],
                                         "neg": [f"page{(i + 1) % 24}.png"]}, ensure_ascii=False) + "\n"
                             for i in range(24)), encoding="utf-8")
    out = tmp_path / "run"
    args = train_args(tiny_model_dir("qwen2_vl"), train_data, out, "--max_steps", "2")
    args[args.index("--train_data") + 1] = str(pairs)
    result = run_train(args)
    assert result.returncode == 0, result.stderr[-4000:]
    assert all(record["loss"] > 0 for record in read_log(out / "log.jsonl").values())
    from retriever.model.saved import load_encoder

    assert load_encoder(out / "final").encode_queries(["第三页上有什么内容？"]).shape[0] == 1


def test_train_smoke_saves_final_model(tiny_model_dir, train_data, tmp_path):
    out = tmp_path / "run"
    result = run_train(train_args(tiny_model_dir("qwen2_vl"), train_data, out, "--max_steps", "2", "--head", "multi",
                          "--training_mode", "lora", "--report_to", "tensorboard"))
    assert result.returncode == 0, result.stderr[-4000:]
    log = read_log(out / "log.jsonl")
    assert sorted(log) == [1, 2]
    assert all(record["loss"] > 0 and record["pairs_per_second"] > 0 for record in log.values())
    assert (out / "loss.png").stat().st_size > 0
    assert any((out / "runs").iterdir()), "no TensorBoard event file"
    from retriever.model.saved import load_encoder

    encoder = load_encoder(out / "final")
    assert encoder.config.head == "multi"
    vectors = encoder.encode_queries(["what is on page 3?"])
    assert len(vectors) == 1 and vectors[0].shape[-1] == 128


def test_kill_and_resume_matches_uninterrupted_run(tiny_model_dir, train_data, tmp_path):
    model = tiny_model_dir("qwen2_vl")
    # LoRA mode: its dropout (0.05) is live, so the per-rank RNG state in the checkpoint is what keeps the resume exact
    steps = ["--max_steps", "6", "--save_steps", "2", "--save_total_limit", "5", "--gradient_accumulation_steps", "2",
             "--per_device_train_batch_size", "2", "--training_mode", "lora"]
    reference = run_train(train_args(model, train_data, tmp_path / "reference", *steps))
    assert reference.returncode == 0, reference.stderr[-4000:]

    out = tmp_path / "killed"
    kill_at_checkpoint(train_args(model, train_data, out, *steps), out)
    resumed = run_train(train_args(model, train_data, out, *steps, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr

    expected, got = read_log(tmp_path / "reference" / "log.jsonl"), read_log(out / "log.jsonl")
    assert sorted(got) == sorted(expected) == list(range(1, 7))
    lines = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 7))  # each step once, none repeated
    for step in expected:
        assert got[step]["pages_sha1"] == expected[step]["pages_sha1"], f"step {step} drew other pages"
        assert got[step]["loss"] == pytest.approx(expected[step]["loss"], rel=1e-5, abs=1e-6), f"step {step}"


def test_resuming_a_checkpoint_of_another_head_or_mode_is_one_line(tiny_model_dir, train_data, tmp_path):
    """A checkpoint records the settings its weights fit; a resume with another head and training mode stops with
    one line naming both differences (not a traceback of state-dict keys), and the checkpoint is left as it was."""
    model, out = tiny_model_dir("qwen2_vl"), tmp_path / "run"
    first = run_train(train_args(model, train_data, out, "--max_steps", "2", "--save_steps", "1",
                                 "--per_device_train_batch_size", "2"))
    assert first.returncode == 0, first.stderr[-4000:]
    checkpoint = out / "checkpoint-1"
    assert json.loads((checkpoint / "run_settings.json").read_text())["head"] == "dense"
    resumed = run_train(train_args(model, train_data, out, "--max_steps", "2", "--per_device_train_batch_size", "2",
                                   "--head", "multi", "--training_mode", "lora", "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 2, resumed.stderr[-4000:]
    assert "Traceback" not in resumed.stderr
    [line] = [line for line in resumed.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: {checkpoint}: saved by a run with other settings than this one: ")
    assert "--training_mode 'full' (this run: 'lora')" in line and "head 'dense' (this run: 'multi')" in line
    assert (checkpoint / "COMPLETE").exists()


def test_a_second_run_into_a_busy_output_dir_stops_with_one_line(tiny_model_dir, train_data, tmp_path, capsys):
    """A running training holds OUTPUT_DIR/.lock; another one into the same --output_dir stops before loading
    anything (the lock is held here by this process: flock locks belong to an open file)."""
    from data_prep.outputs import lock_directory
    from retriever.training.recipe import main

    out = tmp_path / "run"
    out.mkdir()
    with lock_directory(out, "held by the test"), pytest.raises(SystemExit) as stop:
        main(train_args(tiny_model_dir("qwen2_vl"), train_data, out, "--max_steps", "1"))
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {out}: another training run is writing into this --output_dir (it holds its .lock); "
                      "wait for it to end, or train into another --output_dir"]
    assert sorted(path.name for path in out.iterdir()) == [".lock"]


@pytest.mark.distributed
def test_two_nodes_on_localhost(tiny_model_dir, train_data, tmp_path):
    out = tmp_path / "two_nodes"
    args = train_args(tiny_model_dir("qwen2_vl"), train_data, out, "--max_steps", "2", "--per_device_train_batch_size", "2")
    port = str(29500 + os.getpid() % 1000)
    env = {**train_env(), "NNODES": "2", "NPROC_PER_NODE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
           "PYTHON": sys.executable}
    nodes = [subprocess.Popen(["bash", "shell/train_multinode.sh", *args], cwd=REPO_ROOT, env={**env, "NODE_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert sorted(read_log(out / "log.jsonl")) == [1, 2]
    assert (out / "final").is_dir()


def test_bad_line_fails_before_training(train_data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "pos": ["page1.png"]}) + "\n"
                   + json.dumps({"query": "q2", "pos": ["page2.png"], "neg": ["nope.png"]}) + "\n")
    args = train_args(Path("/nonexistent-model"), train_data, tmp_path / "out", "--max_steps", "1")
    args[args.index("--train_data") + 1] = str(bad)
    result = run_train(args, timeout=120)
    assert result.returncode != 0
    assert f"{bad}: line 2: unknown page id 'nope.png'" in result.stderr


def test_deepspeed_config_contradicting_flags_is_refused(tiny_model_dir, train_data, tmp_path):
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"train_micro_batch_size_per_gpu": 16, "zero_optimization": {"stage": 2}}))
    result = run_train(train_args(tiny_model_dir("qwen2_vl"), train_data, tmp_path / "out", "--max_steps", "1",
                          "--deepspeed", str(config)), timeout=120)
    assert result.returncode != 0
    assert "train_micro_batch_size_per_gpu is 16 but the training flags give 4" in result.stderr


@pytest.mark.distributed
def test_deepspeed_zero3_two_ranks_checkpoint_resume_and_final_save(tiny_model_dir, train_data, tmp_path):
    """Through the trainer: ZeRO-3 on 2 ranks, a checkpoint, an exact resume, and a gathered (not empty) final model."""
    from safetensors.torch import load_file

    model, out = tiny_model_dir("qwen2_vl"), tmp_path / "zero3"
    args = train_args(model, train_data, out, "--max_steps", "3", "--save_steps", "2", "--per_device_train_batch_size", "2",
                 "--gc_chunk_size", "1", "--deepspeed", str(REPO_ROOT / "ds_configs" / "zero3.json"))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", str(30500 + os.getpid() % 1000), "-m", "retriever.train"]
    first = subprocess.run([*torchrun, *args], env=train_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=400)
    assert first.returncode == 0, first.stderr[-4000:]
    reference = read_log(out / "log.jsonl")
    resumed = subprocess.run([*torchrun, *args, "--resume_from_checkpoint", str(out / "checkpoint-2")], env=train_env(),
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    again = read_log(out / "log.jsonl")[3]
    assert again["pages_sha1"] == reference[3]["pages_sha1"]
    assert again["loss"] == pytest.approx(reference[3]["loss"], rel=1e-6)
    start, final = load_file(str(model / "model.safetensors")), load_file(str(out / "final" / "model.safetensors"))
    assert set(final) == set(start)
    for name, tensor in start.items():
        assert final[name].shape == tensor.shape, f"{name} saved as a ZeRO-3 partition"
    assert sum(not final[name].equal(tensor) for name, tensor in start.items()) > len(start) // 2


def test_dtype_flag_one_spelling_and_deprecated_aliases() -> None:
    """--dtype everywhere; the trainer's old --torch_dtype and the evaluators' fp32/bf16 still parse, with a warning."""
    from eval.retrieval import parse_args as eval_args
    from retriever.training.args import build_parser

    base = ["--model_name_or_path", "m", "--output_dir", "o", "--train_data", "t.jsonl"]
    assert build_parser().parse_args(base + ["--dtype", "bfloat16"]).dtype == "bfloat16"
    with pytest.warns(FutureWarning, match="--torch_dtype is deprecated; use --dtype"):
        assert build_parser().parse_args(base + ["--torch_dtype", "float64"]).dtype == "float64"
    with pytest.warns(FutureWarning, match="dtype bf16 is deprecated; use bfloat16"):
        assert eval_args(["--model", "m", "--tasks", "t", "--out", "o", "--dtype", "bf16"]).dtype == "bfloat16"
    with pytest.raises(SystemExit):
        eval_args(["--model", "m", "--tasks", "t", "--out", "o", "--dtype", "int8"])
