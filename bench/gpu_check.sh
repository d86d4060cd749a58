#!/usr/bin/env bash
# GPU checks of the fused MaxSim, about 4 to 5 minutes on one H100 (each step has its own time limit):
#   1. the scoring / loss / fused-kernel tests on CUDA,
#   2. bench.maxsim on the issue's shape, float32 and bf16, against colpali-engine when it is importable
#      (pip install --no-deps colpali-engine),
#   3. bench.maxsim_fused: tile-size sweep of the scoring kernel on fixed and dynamic pages (bf16, and float32
#      as three fp16 products or tf32x3), fused loss forward+backward at B = 4096 pairs (page-gradient blocks
#      32/64/128, 4 pages per forward program), and fused vs chunked loss at B = 512.
# Reports are written to $OUT (default bench/results/gpu): env.txt, pytest.txt, maxsim_fp32.json,
# maxsim_bf16.json, maxsim_fused.json, stderr.txt. Usage: bash bench/gpu_check.sh
set -u
OUT=${OUT:-bench/results/gpu}
PY=${PYTHON:-python}
SHAPE=(--queries 256 --pages 4096 --q-tokens 32 --page-tokens 768 --repeats 3)
mkdir -p "$OUT"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log its exit status
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@"
    echo "== $name: exit $? after $((SECONDS - start)) s" >> "$OUT/stderr.txt"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__);
print(torch.cuda.get_device_properties(0))"
    date -u
} > "$OUT/env.txt" 2>&1

step pytest 120 $PY -m pytest -q -x -p no:cacheprovider tests/retriever/scoring/test_fused.py tests/retriever/scoring/test_scoring.py \
    tests/retriever/training/test_losses.py > "$OUT/pytest.txt" 2>&1
tail -n 3 "$OUT/pytest.txt"
step maxsim_fp32 75 $PY -m bench.maxsim --device cuda "${SHAPE[@]}" > "$OUT/maxsim_fp32.json" 2>> "$OUT/stderr.txt"
step maxsim_bf16 75 $PY -m bench.maxsim --device cuda --bf16 "${SHAPE[@]}" > "$OUT/maxsim_bf16.json" \
    2>> "$OUT/stderr.txt"
step maxsim_fused 240 $PY -m bench.maxsim_fused --loss-configs 128x64x8x3x32,128x64x8x3x128,128x64x8x3@4 \
    --json "$OUT/maxsim_fused.json" > /dev/null 2>> "$OUT/stderr.txt"
cat "$OUT/stderr.txt"

$PY - "$OUT" <<'EOF'
"""One-screen summary of the reports."""
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
reports = {}
for name in ("maxsim_fp32.json", "maxsim_bf16.json", "maxsim_fused.json"):
    text = (out / name).read_text() if (out / name).exists() else ""
    start = text.find("{")
    if start < 0:
        print(name, "missing or empty")
        continue
    report = reports[name] = json.loads(text[start:])
    print(name, "gemm TFLOP/s", round(report.get("bf16_matmul_tflops", 0), 1))
    for row in report.get("results", []):
        print("  ", {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    rows = report.get("sweep", []) + report.get("sweep_fp32", []) + [report.get("loss", {})]
    rows += report.get("loss_backward_parts", [])
    for row in rows + report.get("loss_configs", []) + report.get("loss_baseline", []):
        print("  ", {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})


def verdict(what, value, ok):
    print(f"  {'met   ' if ok else 'MISSED'} {what}: {value}")


print("targets (the MaxSim issue; default configurations, end to end):")
for name, tol in (("maxsim_bf16.json", 1e-2), ("maxsim_fp32.json", 1e-5)):
    for row in reports.get(name, {}).get("results", []):
        tag = f"{name.split('_')[1].removesuffix('.json')} {row['layout']}"
        if "speedup" in row:
            verdict(f"{tag} >= 3x colpali-engine, scores within {tol:g}",
                    f"{row['speedup']:.2f}x, {row['max_abs_diff']:.2g}",
                    row["speedup"] >= 3 and row["max_abs_diff"] <= tol)
        if name == "maxsim_bf16.json":
            verdict(f"{tag} >= 40 % of the bf16 GEMM rate", f"{row['fraction_of_bf16_matmul']:.1%}",
                    row["fraction_of_bf16_matmul"] >= 0.40)
loss = reports.get("maxsim_fused.json", {}).get("loss")
if loss:
    verdict("loss forward+backward at B = 4096 >= 25 % of the bf16 GEMM rate",
            f"{loss['fraction_of_bf16_matmul']:.1%} ({loss['forward_s']:.3f} + {loss['backward_s']:.3f} s)",
            loss["fraction_of_bf16_matmul"] >= 0.25)
EOF
