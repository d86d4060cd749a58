# Sourced by shell/test.sh and shell/quickstart.sh: create or reuse .venv and install the project into it.
# torch goes in first (pinned to the CPU wheel where torch is missing), then DeepSpeed without building its ops,
# then the project itself with its dev extras, then colpali-engine (test references) and fastembed without their
# dependencies.
# A marker file skips the installs when neither setup.py nor this script has changed.
VENV="${VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
STAMP="$VENV/.vlmret-installed"
WANT="$(cat "$ROOT/setup.py" "$ROOT/shell/venv.sh" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  python -m pip install -q --upgrade pip wheel setuptools
  python -c "import torch" 2>/dev/null || python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
  python -c "import deepspeed" 2>/dev/null || DS_BUILD_OPS=0 python -m pip install -q --no-build-isolation deepspeed
  python -m pip install -q -e "$ROOT[dev]"
  # The reference classes for the published-checkpoint tests, without their dependencies (torchvision among them).
  python -m pip install -q --no-deps "colpali-engine>=0.3.18"
  # MUVERA encodings (retriever.index.muvera), without fastembed's huggingface-hub<2 pin (transformers 5 needs 2.x);
  # setup.py lists what its package imports.
  python -m pip install -q --no-deps "fastembed>=0.7"
  echo "$WANT" > "$STAMP"
fi
