"""Where a generation run's settings record lies (the checkpoint identity it holds: tests/retriever/model/
test_identity.py)."""
from __future__ import annotations

from pathlib import Path

from query_generation.provenance import settings_path


def test_the_record_lies_beside_the_queries_file(tmp_path: Path) -> None:
    assert settings_path(tmp_path / "queries.jsonl") == tmp_path / "queries.settings.json"
