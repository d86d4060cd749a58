"""shell/train_multinode.sh derives the torchrun topology from slurm or from plain variables (dry run)."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.helpers.paths import REPO_ROOT

SCRIPT = REPO_ROOT / "shell" / "train_multinode.sh"


def _dry_run(env: dict[str, str], *args: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "NNODES", "NODE_RANK",
                                                                       "NPROC_PER_NODE"))}
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], env={**clean, **env}, check=True,
                         capture_output=True, text=True).stdout
    return shlex.split(out)


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_plain_variables_and_arguments_pass_through():
    cmd = _dry_run({"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "1234",
                    "NPROC_PER_NODE": "4"}, "--output_dir", "out dir", "--seed", "7")
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert (_flag(cmd, "--nnodes"), _flag(cmd, "--node_rank"), _flag(cmd, "--nproc_per_node")) == ("2", "1", "4")
    assert (_flag(cmd, "--master_addr"), _flag(cmd, "--master_port")) == ("10.0.0.5", "1234")
    assert cmd[cmd.index("retriever.train") + 1:] == ["--output_dir", "out dir", "--seed", "7"]


def test_slurm_variables(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text("#!/bin/sh\nprintf 'gpu-a17\\ngpu-a18\\n'\n")
    (fake / "scontrol").chmod(0o755)
    cmd = _dry_run({"SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
                    "SLURM_JOB_NODELIST": "gpu-a[17-18]", "NPROC_PER_NODE": "8",
                    "PATH": f"{fake}:{os.environ['PATH']}"})
    assert (_flag(cmd, "--nnodes"), _flag(cmd, "--node_rank")) == ("2", "1")
    assert _flag(cmd, "--master_addr") == "gpu-a17"
    assert _flag(cmd, "--master_port") == str(20000 + 4242 % 20000)


def test_defaults_single_node():
    cmd = _dry_run({"NPROC_PER_NODE": "1"})
    assert (_flag(cmd, "--nnodes"), _flag(cmd, "--node_rank"), _flag(cmd, "--master_addr")) == ("1", "0", "127.0.0.1")


def _error(env: dict[str, str], script: Path = SCRIPT) -> str:
    """The one ``error:`` line of a dry run that exits with 2."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "NNODES", "NODE_RANK",
                                                                       "NPROC_PER_NODE"))}
    proc = subprocess.run(["bash", str(script), "--dry-run"], env={**clean, **env}, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == "", (proc.stdout, proc.stderr)
    (line,) = proc.stderr.splitlines()
    return line


@pytest.mark.parametrize("script", ["train_multinode.sh", "eval_dist.sh"])
def test_topology_variables_are_checked(script):
    path, name = REPO_ROOT / "shell" / script, script
    one = {"NPROC_PER_NODE": "1"}
    assert _error({"SLURM_JOB_ID": "abc", **one}, path) == (
        f"error: {name}: SLURM_JOB_ID must be a non-negative integer, got 'abc'")
    assert _error({"NNODES": "2", "NODE_RANK": "5", **one}, path) == (
        f"error: {name}: NODE_RANK must be below NNODES (2), got 5")
    assert _error({"NNODES": "two", **one}, path) == f"error: {name}: NNODES must be a positive integer, got 'two'"
    assert _error({"NNODES": "9", "NODE_RANK": "08", **one}, path).endswith("NODE_RANK must be a non-negative "
                                                                             "integer, got '08'")
    assert _error({"NPROC_PER_NODE": "0"}, path).endswith("NPROC_PER_NODE must be a positive integer, got '0'")
    assert _error({"MASTER_PORT": "70000", **one}, path).endswith("MASTER_PORT must be an integer from 1 to 65535, "
                                                                   "got '70000'")
    assert _error({"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "x", **one}, path).endswith(
        "SLURM_NODEID must be a non-negative integer, got 'x'")


def test_eval_module_is_checked():
    assert _error({"EVAL_MODULE": "eval.nope", "NPROC_PER_NODE": "1"}, REPO_ROOT / "shell" / "eval_dist.sh") == (
        "error: eval_dist.sh: EVAL_MODULE must be eval.retrieval or eval.image_text, got 'eval.nope'")
