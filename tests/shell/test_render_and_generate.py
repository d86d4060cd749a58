"""shell/render_and_generate.sh: the plan it prints, shard layout per engine, slurm task checks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.paths import REPO_ROOT

SCRIPT = str(REPO_ROOT / "shell" / "render_and_generate.sh")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    path = f"{Path(sys.executable).parent}{os.pathsep}{clean.get('PATH', '')}"  # `python` is this interpreter
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True,
                          env={**clean, "PATH": path, "PYTHONPATH": str(REPO_ROOT), **(env or {})})


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a failed run, which exited with status 2."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def test_dry_run_plans_one_engine_per_gpu_group(tmp_path):
    done = tmp_path / "out" / ".done"
    done.mkdir(parents=True)
    (done / "pages").touch()
    result = run("--pdfs", "pdfs", "--out", str(tmp_path / "out"), "--model", "org/vlm", "--gpus", "4", "--tp", "2",
                 "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "[done] pages" in lines and "[todo] render" in lines
    assert "[todo] generate shard 0 of 2 on GPU(s) 0,1" in lines and "[todo] generate shard 1 of 2 on GPU(s) 2,3" in lines
    assert "--num_shards 2 --shard_index 1 --tensor_parallel_size 2" in result.stdout
    assert not (tmp_path / "out" / "store").exists()  # a dry run runs nothing


def test_bad_arguments_are_one_error_line_and_status_2(tmp_path):
    required = ("--pdfs", "x", "--out", str(tmp_path / "out"), "--model", "m")
    assert error_line(run("--pdfs", "x")) == ("error: render_and_generate.sh: --pdfs, --out and --model are "
                                              "required (see --help)")
    assert error_line(run(*required, "--gpus", "3", "--tp", "2")) == (
        "error: render_and_generate.sh: --gpus (3) must be a positive multiple of --tp (2)")
    assert error_line(run(*required, "--tp", "0")).endswith("--tp must be a positive integer, got '0'")
    assert error_line(run(*required, "--until", "train")).endswith("--until must be pages, render, generate or "
                                                                  "filter, got 'train'")
    assert error_line(run(*required, "--bogus")).endswith("unknown argument '--bogus' (see --help)")
    assert not (tmp_path / "out").exists()


def test_slurm_task_needs_the_render_stage(tmp_path):
    result = run("--pdfs", "pdfs", "--out", str(tmp_path / "out"), "--model", "m",
                 env={"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8"})
    assert error_line(result) == ("error: slurm task 3: the render stage is not done; run this script once with "
                                  "--until render first")


def test_a_stage_that_stops_on_a_user_error_makes_the_script_exit_2(tmp_path):
    """Two engines, each stopped by the generator's own error line (an empty store): the script exits with 2."""
    out = tmp_path / "out"
    (out / ".done").mkdir(parents=True)
    for stage in ("pages", "render"):
        (out / ".done" / stage).touch()
    (out / "pages.jsonl").write_text('{"id": "a/1", "doc_id": "a", "page": 1, "source": "a.pdf"}\n')
    result = run("--pdfs", "pdfs", "--out", str(out), "--model", "m", "--gpus", "2")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 2 and all(e.startswith(f"error: page store not found: {out / 'store'}") for e in errors)
    assert "generation shard 1 of 2 stopped (exit status 2)" in result.stderr
    assert not (out / ".done" / "generate").exists()


def test_a_flag_without_its_value_is_an_error(tmp_path):
    required = ("--pdfs", "x", "--out", str(tmp_path / "out"), "--model", "m")
    assert error_line(run("--pdfs", "x", "--out", str(tmp_path / "out"), "--model")) == (
        "error: render_and_generate.sh: --model needs a value")
    assert error_line(run("--model", "--pdfs", "x")) == "error: render_and_generate.sh: --model needs a value"
    assert error_line(run(*required, "--generate_args")).endswith("--generate_args needs a value")
    assert not (tmp_path / "out").exists()


def test_numbers_and_backend_are_checked_before_anything_runs(tmp_path):
    required = ("--pdfs", "x", "--out", str(tmp_path / "out"), "--model", "m")
    cases = {("--max_new_tokens", "1e3"): "--max_new_tokens must be a positive integer, got '1e3'",
             ("--queries_per_page", "0"): "--queries_per_page must be a positive integer, got '0'",
             ("--batch_size", "-4"): "--batch_size must be a positive integer, got '-4'",
             ("--dpi", "abc"): "--dpi must be a number above 0, got 'abc'",
             ("--test_fraction", "1.5"): "--test_fraction must be a number from 0 to 1, got '1.5'",
             ("--backend", "vlm"): "--backend must be vllm, transformers or openai, got 'vlm'"}
    for flag, message in cases.items():
        assert error_line(run(*required, *flag)) == f"error: render_and_generate.sh: {message}"
    assert not (tmp_path / "out").exists()


def test_extra_args_are_passed_literally_not_globbed(tmp_path):
    (tmp_path / "a_file").touch()  # what '*' would expand to in the current directory
    result = subprocess.run(["bash", SCRIPT, "--pdfs", "x", "--out", str(tmp_path / "out"), "--model", "m",
                             "--generate_args", "* --temperature\n0.5", "--filter_args", "--rules ?", "--dry-run"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--shard_index 0 \\* --temperature 0.5 --tensor_parallel_size 1" in result.stdout
    assert "--rejected " + str(tmp_path / "out" / "rejected.jsonl") + " --rules \\?" in result.stdout
    assert "a_file" not in result.stdout


def test_slurm_variables_are_checked(tmp_path):
    args = ("--pdfs", "x", "--out", str(tmp_path / "out"), "--model", "m")
    assert error_line(run(*args, env={"SLURM_ARRAY_TASK_ID": "abc", "SLURM_ARRAY_TASK_COUNT": "2"})) == (
        "error: render_and_generate.sh: SLURM_ARRAY_TASK_ID must be a non-negative integer, got 'abc'")
    assert error_line(run(*args, env={"SLURM_PROCID": "0", "SLURM_NTASKS": "x"})).endswith(
        "SLURM_NTASKS must be a positive integer, got 'x'")
    assert error_line(run(*args, env={"SLURM_PROCID": "4", "SLURM_NTASKS": "2"})).endswith(
        "SLURM_PROCID must be an integer from 0 to 1, got '4'")
    assert error_line(run(*args, env={"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4"})).endswith(
        "must be an integer from 0 to 3, got '9'")
    # --array=0-12:4 numbers its tasks 0, 4, 8, 12: task 12 is shard 3 of 4
    assert error_line(run(*args, env={"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_COUNT": "4",
                                      "SLURM_ARRAY_TASK_STEP": "4"})).startswith("error: slurm task 3:")
