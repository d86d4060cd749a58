#!/usr/bin/env bash
# Creates or reuses .venv, installs the project with its test dependencies, and runs the test suite.
# Extra arguments go to pytest, e.g. `bash shell/test.sh tests/retriever/training/test_losses.py -x`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=shell/venv.sh
source shell/venv.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python -m pytest -ra --timeout=900 "${@:-tests}"
