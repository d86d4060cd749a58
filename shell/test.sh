#!/usr/bin/env bash
# Creates or reuses .venv, installs the project with its test dependencies, and runs the test suite on two pytest-xdist
# workers (TEST_WORKERS=0 runs it in one process; multi-rank tests always run one after the other, see
# tests/conftest.py). Extra arguments go to pytest, e.g. `bash shell/test.sh tests/retriever/training/test_losses.py -x`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=shell/venv.sh
source shell/venv.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORKERS="${TEST_WORKERS:-2}"
case "$WORKERS" in ''|*[!0-9]*) echo "error: TEST_WORKERS must be a number, got '$WORKERS'" >&2; exit 2;; esac
PARALLEL=()
[ "$WORKERS" -gt 0 ] && PARALLEL=(-n "$WORKERS" --dist loadgroup)
python -m pytest -ra --timeout=900 --durations=15 "${PARALLEL[@]}" "${@:-tests}"
