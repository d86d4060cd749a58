"""CLI: ``python -m retriever.tiny --arch qwen2_vl --out /tmp/tiny_qwen2_vl``, a tiny random-weight VLM checkpoint
(config, safetensors, tokenizer, processor) that loads like a hub checkpoint, for offline tests and smoke runs.

The builders are :mod:`retriever.model.tiny_checkpoints`; this module is only the command line.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from data_prep.errors import InputError, cli
from data_prep.flags import fraction
from retriever.model.tiny_checkpoints import BUILDERS, build_tiny


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m retriever.tiny",
        description="Write a tiny random-weight VLM checkpoint (config, safetensors, tokenizer, processor) "
        "that loads like a hub checkpoint; for offline tests and smoke runs.")
    parser.add_argument("--arch", required=True, choices=sorted(BUILDERS), help="architecture to build")
    parser.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    parser.add_argument("--dropout", type=fraction, default=0.0, help="attention/hidden dropout (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} is a file; give a directory for the checkpoint")
    print(build_tiny(args.arch, args.out, dropout=args.dropout, seed=args.seed))


if __name__ == "__main__":
    main()
