"""What made an output: a checkpoint's identity, and a digest of the ids a job worked on.

Resumable state computed by a model (the evaluator's per-chunk top-k, the miner's page-embedding cache, query
generation's journal, training checkpoints) records the identity of that model beside what else decides it, so
that a rerun with another model is noticed instead of mixing two models' outputs. An encoder's whole fingerprint
is :attr:`retriever.model.encoder.RetrieverEncoder.fingerprint`.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from data_prep.errors import read_json_input

__all__ = ["ADAPTER_CONFIG", "adapter_base", "checkpoint_identity", "ids_digest"]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
SAMPLE_BYTES = 1 << 20
ADAPTER_CONFIG = "adapter_config.json"


def checkpoint_identity(model: str | os.PathLike | None) -> str | None:
    """A local checkpoint's identity: a hash of its ``config.json`` and of the size, first and last MiB of each
    weight file (heads and adapters included), so that a checkpoint retrained in place differs and a copy does
    not; a peft adapter directory also hashes the identity of its base (or the base's hub id). None for a hub id
    or a served model name, whose name is its identity."""
    directory = Path(model) if model is not None else None
    if directory is None or not directory.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.name == "config.json" or path.suffix in WEIGHT_SUFFIXES:
            digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
            digest.update(_ends(path))
    base = adapter_base(directory)
    if base:
        digest.update(f"base\0{checkpoint_identity(base) or base}".encode())
    return digest.hexdigest()[:16]


def ids_digest(ids: Iterable[str]) -> str:
    """A short hash of a sequence of ids (order counts), for a state's record of what it covers."""
    digest = hashlib.sha256()
    for item in ids:
        digest.update(item.encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]


def _ends(path: Path) -> bytes:
    with open(path, "rb") as fh:
        head = fh.read(SAMPLE_BYTES)
        fh.seek(max(0, path.stat().st_size - SAMPLE_BYTES))
        return head + fh.read(SAMPLE_BYTES)


def adapter_base(directory: Path) -> str | None:
    """The ``base_model_name_or_path`` of a peft adapter directory (None when ``directory`` has no adapter config,
    or it names no base); a config that is not UTF-8 JSON is one error line naming it."""
    config = directory / ADAPTER_CONFIG
    if not config.exists():
        return None
    data = read_json_input(config, "LoRA adapter config")
    base = data.get("base_model_name_or_path") if isinstance(data, dict) else None
    return base if isinstance(base, str) and base else None
