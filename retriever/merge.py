"""Export a LoRA-trained retriever as a standalone checkpoint.

``python -m retriever.merge --model RUN_DIR --out MERGED_DIR`` loads a directory written by
``retriever.model.saved.save_encoder`` in LoRA mode (adapter + heads + config), folds the adapters into the
base weights with peft's ``merge_and_unload`` and writes a full checkpoint (transformers ``config.json`` +
``model.safetensors``, heads, retriever config, tokenizer / image-processor files) that loads as ``full``
without the base checkpoint or peft.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from data_prep.errors import MissingInputError, cli
from data_prep.outputs import check_outputs
from retriever.model.dtype import add_dtype_argument
from retriever.model.saved import ADAPTER_FILE, checkpoint_inputs, load_encoder, save_merged


def merge(model_dir: Path, out_dir: Path, dtype: torch.dtype | str | None = None,
          trust_remote_code: bool = False) -> Path:
    """Merges the LoRA run in ``model_dir`` into a full checkpoint at ``out_dir``; returns ``out_dir``. An
    ``out_dir`` that is, lies in or contains the run or its base model is refused before anything is loaded."""
    if not (model_dir / ADAPTER_FILE).exists():
        raise MissingInputError(f"{model_dir / ADAPTER_FILE} is missing: {model_dir} is not a LoRA run to merge "
                                "(only --training_mode lora runs have adapters)")
    check_outputs({"--out": out_dir}, checkpoint_inputs("--model", model_dir), directories=("--out",))
    encoder = load_encoder(model_dir, training_mode="lora", dtype=dtype, trust_remote_code=trust_remote_code)
    save_merged(encoder, out_dir, in_place=True)
    return out_dir


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m retriever.merge",
        description="Merge a LoRA retriever (adapter + heads) into a standalone full checkpoint.")
    parser.add_argument("--model", required=True, type=Path, help="directory written in LoRA mode")
    parser.add_argument("--out", required=True, type=Path, help="output directory for the merged checkpoint")
    add_dtype_argument(parser, None, "dtype to load and save in (default: the checkpoint's own)")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="allow code from the checkpoint (needed by MiniCPM-V only)")
    args = parser.parse_args(argv)
    out = merge(args.model, args.out, args.dtype, args.trust_remote_code)
    print(f"merged checkpoint written to {out}")


if __name__ == "__main__":
    main()
