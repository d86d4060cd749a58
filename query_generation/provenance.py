"""What a queries file was generated with: the settings recorded beside the journal.

``query_generation.generate`` records the settings that decide what the model writes (backend, model and the
identity of a local checkpoint, prompt, decoding, batch layout) in ``<OUT stem>.settings.json`` beside ``--out``.
A rerun onto an existing journal with other settings is refused (:func:`data_prep.outputs.check_settings`), so
that one queries file never mixes the answers of two models, prompts or decodings. A local checkpoint is
recorded by its identity (:func:`retriever.model.identity.checkpoint_identity`).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from retriever.model.identity import checkpoint_identity


def settings_path(out: str | os.PathLike) -> Path:
    """The settings record of the queries file ``out``."""
    out = Path(out)
    return out.with_name(out.stem + ".settings.json")


def local_model(model: str | None) -> Path | None:
    """``model`` when it names a local checkpoint directory (not a hub id or a served model name)."""
    return Path(model) if model and Path(model).is_dir() else None


def generation_settings(args: argparse.Namespace, prompt_ident: str, batch_size: int) -> dict[str, Any]:
    """The settings of a generation run that decide the records it writes, by flag."""
    return {"--backend": args.backend, "--model": args.model, "model checkpoint": checkpoint_identity(args.model),
            "--dtype": args.dtype, "--prompt": prompt_ident, "--queries_per_page": args.queries_per_page,
            "--samples_per_page": args.samples_per_page, "--max_new_tokens": args.max_new_tokens,
            "--temperature": args.temperature, "--seed": args.seed, "--max_pixels": args.max_pixels,
            "--no_structured_output": args.no_structured_output, "--batch_size": batch_size,
            "--num_shards": args.num_shards, "--shard_index": args.shard_index}


def has_output(out: Path, failures: Path) -> bool:
    """Whether the journal or its failures log holds records already: the run resumes them."""
    return any(path.is_file() and path.stat().st_size > 0 for path in (out, failures))
