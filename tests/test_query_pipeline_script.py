"""shell/render_and_generate.sh: the plan it prints, shard layout per engine, slurm task checks."""
from __future__ import annotations

import os
import subprocess

from conftest import REPO_ROOT

SCRIPT = str(REPO_ROOT / "shell" / "render_and_generate.sh")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env={**clean, **(env or {})})


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


def test_bad_arguments_are_refused(tmp_path):
    assert "--pdfs, --out and --model are required" in run("--pdfs", "x").stderr
    assert "multiple of --tp" in run("--pdfs", "x", "--out", "y", "--model", "m", "--gpus", "3", "--tp", "2").stderr


def test_slurm_task_needs_the_render_stage(tmp_path):
    result = run("--pdfs", "pdfs", "--out", str(tmp_path / "out"), "--model", "m",
                 env={"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8"})
    assert result.returncode == 1 and "slurm task 3: the render stage is not done" in result.stderr
