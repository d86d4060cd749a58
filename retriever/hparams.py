"""CLI: recommended training hyperparameters for a model, a training mode and a device, each with its reason.

``python -m retriever.hparams --model M [--training_mode lora] [--head multi] [--train_data pairs.jsonl]
[--gpus N] [--global_batch 256] [--out hparams.json]``

Rules (from the published recipes this project reproduces; the reason column says which):

* learning rate by trainable size and mode: full fine-tuning 1e-5 at >= 1B parameters (DSE), 3e-5 at >= 200M,
  1e-4 below, 3e-3 for the tiny test models (< 10M, the quickstart's); LoRA 2e-4 at >= 1B (ColQwen2), 5e-4 below;
  head only 1e-3;
* LoRA rank and alpha: 32 / 32 at >= 1B (colpali-engine's ColQwen2 and ColPali), 16 / 32 below;
* temperature 0.02 (colpali-engine's ColbertLoss, DSE);
* batch: ``--global_batch`` pairs per optimizer step (256: ColPali's 32 x 8 GPUs; at most the training set) split over
  ``--gpus``; with GradCache the batch does not have to fit in memory, only the chunk;
* GradCache chunk: **measured** on CUDA (``retriever.training.gradcache.auto_chunk_size``: the peak memory of a
  forward+backward of 1 and 2 pages gives the largest chunk within ``--memory_fraction`` of the GPU); on a machine
  without CUDA it cannot be measured and a rule (8) is used, and the table says so;
* epochs: enough passes for about 60k pairs seen (1 epoch from 60k training pairs, at most 30: the quickstart's 300
  pairs learn in 25), warm-up 5 % of the optimizer steps (at most 100, ColPali's).

Prints the table and writes ``--out`` (JSON: ``flags``, the ``retriever.train`` flag values, and ``reasons``), which
``retriever.train --hparams FILE`` reads as defaults (flags given on its command line win).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from data_prep.errors import InputError, cli
from data_prep.flags import positive_int
from data_prep.outputs import write_text_atomic
from retriever.model.backbones import backbone_for_model_type
from retriever.model.identity import adapter_base
from retriever.model.saved import resolve_checkpoint

__all__ = ["main", "recommend"]

PAIRS_SEEN = 60_000
MAX_EPOCHS = 30
CPU_CHUNK = 8


def parameter_count(model: str, trust_remote_code: bool = False) -> int:
    """Parameters of the checkpoint's backbone, counted on the meta device (no weights are read)."""
    from transformers import AutoConfig

    path = resolve_checkpoint(model)
    base = adapter_base(path)
    try:
        config = AutoConfig.from_pretrained(base or path, trust_remote_code=trust_remote_code)
        config = getattr(config, "vlm_config", None) or config
        adapter = backbone_for_model_type(config.model_type)
        with torch.device("meta"):
            backbone = adapter.auto_class().from_config(config)
    except (OSError, ValueError) as err:
        raise InputError(f"--model {model}: cannot read its model configuration ({err})") from err
    return sum(p.numel() for p in backbone.parameters())


def _learning_rate(params: int, mode: str) -> tuple[float, str]:
    if mode == "head":
        return 1e-3, "head only: a fresh projection on a frozen backbone"
    if mode == "lora":
        return (2e-4, "LoRA on a >= 1B model (ColQwen2's 2e-4)") if params >= 1e9 else \
            (5e-4, "LoRA on a < 1B model: fewer, smaller adapters take a larger step")
    if params < 1e7:
        return 3e-3, "full fine-tuning of a tiny test model (< 10M parameters: the quickstart learns with 3e-3)"
    if params < 2e8:
        return 1e-4, "full fine-tuning of a < 200M model"
    return (3e-5, "full fine-tuning of a 200M-1B model") if params < 1e9 else \
        (1e-5, "full fine-tuning of a >= 1B model (DSE's 1e-5)")


def step_batch(global_batch: int, pairs: int | None, gpus: int) -> tuple[int, int]:
    """Pairs per optimizer step (at most the training set) and per rank."""
    batch = min(global_batch, pairs) if pairs else global_batch
    return batch, max(1, batch // gpus)


def recommend(params: int, mode: str, head: str, pairs: int | None, gpus: int, global_batch: int,
              chunk: tuple[int, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The flags and the reason for each."""
    flags, reasons = {}, {}
    flags["learning_rate"], reasons["learning_rate"] = _learning_rate(params, mode)
    if mode == "lora":
        big = params >= 1e9
        flags["lora_r"], flags["lora_alpha"] = (32, 32) if big else (16, 32)
        reasons["lora_r"] = reasons["lora_alpha"] = ("colpali-engine's ColQwen2 / ColPali adapters (r 32, alpha 32)"
                                                     if big else "a < 1B model: rank 16, alpha 32 (scale 2)")
    flags["temperature"] = 0.02
    reasons["temperature"] = f"{head} head: colpali-engine's ColbertLoss and DSE train at 0.02"
    batch, per_device = step_batch(global_batch, pairs, gpus)
    flags["per_device_train_batch_size"] = per_device
    reasons["per_device_train_batch_size"] = (f"{batch} pairs per step (ColPali: 32 x 8 GPUs; at most the training "
                                              f"set) over {gpus} rank(s); GradCache makes the batch independent of "
                                              "memory")
    flags["gc_chunk_size"], reasons["gc_chunk_size"] = min(chunk[0], per_device), chunk[1]
    if pairs:
        epochs = min(MAX_EPOCHS, max(1, math.ceil(PAIRS_SEEN / pairs)))
        steps = epochs * math.ceil(pairs / (per_device * gpus))
        flags["num_train_epochs"] = epochs
        reasons["num_train_epochs"] = (f"about {PAIRS_SEEN} pairs seen from {pairs} training pairs (at most "
                                       f"{MAX_EPOCHS} passes)")
        flags["warmup_steps"] = min(100, max(1, steps // 20))
        reasons["warmup_steps"] = f"5 % of the {steps} optimizer steps, at most 100 (ColPali's)"
    return flags, reasons


def measured_chunk(args: argparse.Namespace, per_device: int) -> tuple[int, str]:
    """The GradCache chunk that fits ``--memory_fraction`` of the GPU, or the CPU rule."""
    if not torch.cuda.is_available():
        return CPU_CHUNK, f"not measured: no CUDA device here, so the rule ({CPU_CHUNK}); run this on the GPU machine"
    from retriever.model.saved import load_encoder
    from retriever.training.gradcache import auto_chunk_size

    encoder = load_encoder(args.model, settings={"head": args.head}, training_mode=args.training_mode,
                           device="cuda", trust_remote_code=args.trust_remote_code).train()
    chunk = auto_chunk_size(encoder, per_device, args.memory_fraction, torch.device("cuda"))
    name = torch.cuda.get_device_name(0)
    return chunk, f"measured on {name}: the largest chunk within {args.memory_fraction:.0%} of its memory"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m retriever.hparams", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory or hub id (as retriever.train takes)")
    p.add_argument("--training_mode", choices=["full", "lora", "head"], default="lora")
    p.add_argument("--head", choices=["dense", "multi"], default="multi")
    p.add_argument("--train_data", type=Path, default=None, help="pairs JSONL: its size sets epochs and warm-up")
    p.add_argument("--gpus", type=positive_int, default=1, help="ranks the training will run on")
    p.add_argument("--global_batch", type=positive_int, default=256, help="pairs per optimizer step")
    p.add_argument("--memory_fraction", type=float, default=0.8, help="GPU memory the GradCache chunk may use")
    p.add_argument("--out", type=Path, default=None, help="write the flags and reasons as JSON")
    p.add_argument("--trust_remote_code", action="store_true", help="allow the checkpoint's own code (MiniCPM-V 2.x)")
    return p.parse_args(argv)


def _pairs(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except OSError as err:
        raise InputError(f"--train_data {path}: cannot read it ({err.strerror})") from err


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params, pairs = parameter_count(args.model, args.trust_remote_code), _pairs(args.train_data)
    per_device = step_batch(args.global_batch, pairs, args.gpus)[1]
    flags, reasons = recommend(params, args.training_mode, args.head, pairs, args.gpus,
                               args.global_batch, measured_chunk(args, per_device))
    print(f"{args.model}: {params / 1e6:.1f}M parameters, --training_mode {args.training_mode}, --head {args.head}")
    print("| flag | value | why |\n|---|---|---|")
    for flag, value in flags.items():
        print(f"| --{flag} | {value} | {reasons[flag]} |")
    if args.out is not None:
        write_text_atomic(args.out, json.dumps({"model": args.model, "parameters": params, "flags": flags,
                                                "reasons": reasons}, indent=2) + "\n")
        print(f"wrote {args.out} (retriever.train --hparams {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
