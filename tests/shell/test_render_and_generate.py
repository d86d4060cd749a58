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
