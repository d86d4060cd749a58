"""shell/quickstart.sh refuses arguments and never empties a folder that is not its own output."""
from __future__ import annotations

import os
import subprocess

from tests.helpers.paths import REPO_ROOT

SCRIPT = str(REPO_ROOT / "shell" / "quickstart.sh")


def _error(*args: str, out: str) -> str:
    proc = subprocess.run(["bash", SCRIPT, *args], env={**os.environ, "QUICKSTART_OUT": out}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == "", (proc.stdout, proc.stderr)
    (line,) = proc.stderr.splitlines()
    return line


def test_arguments_are_refused(tmp_path):
    assert _error("--fast", out=str(tmp_path / "out")) == (
        "error: quickstart.sh: takes no arguments, got '--fast' (set MODEL or QUICKSTART_OUT in the environment "
        "instead)")


def test_a_folder_that_is_not_its_output_is_kept(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    assert _error(out=str(tmp_path)).startswith(f"error: quickstart.sh: QUICKSTART_OUT {tmp_path} is not empty and "
                                                "not an earlier quickstart output")
    assert (tmp_path / "precious.txt").read_text() == "keep me"
