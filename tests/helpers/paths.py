"""Where the repository and its shared sample data lie, for tests at any depth of ``tests/``."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_PDFS = REPO_ROOT.parent / "shared" / "pdfs"
