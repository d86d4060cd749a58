"""The fused MaxSim kernels compile for an H100/H200 (sm_90) on a machine without a GPU.

Triton's interpreter runs the kernels' arithmetic in the other tests but never lowers them; this runs
``bench.compile_check`` (Triton's NVIDIA backend with its bundled ptxas, no driver) in a subprocess without the
interpreter, so a kernel that cannot compile for the GPU fails here, on CPU-only CI.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers.paths import REPO_ROOT

triton = pytest.importorskip("triton")
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
REPO = REPO_ROOT


@pytest.mark.skipif(not (BIN / "ptxas").exists() or not (BIN / "cuobjdump").exists(),
                    reason="Triton's NVIDIA backend tools are absent")
def test_every_kernel_compiles_for_sm90_with_tensor_cores(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    report_path = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "-m", "bench.compile_check", "--json", str(report_path)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    kernels = {row["kernel"]: row for row in json.loads(report_path.read_text())["kernels"]}
    assert len(kernels) == 15 and not [k for k, row in kernels.items() if "error" in row]
    for name, row in kernels.items():
        if name.startswith(("forward", "page gradient,")):  # the products run on tensor cores
            assert row["tensor_core_instructions"], name
    assert "HGMMA" in kernels["forward, bfloat16 eval 256x64"]["tensor_core_instructions"]
    assert "HGMMA" in kernels["forward, float32 eval 128x64 split"]["tensor_core_instructions"]
