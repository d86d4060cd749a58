"""Every flag of ``python -m retriever.train`` in one place, with its default and what it does.

HF-style names where HF has the concept (``--per_device_train_batch_size``, ``--deepspeed``, ...), ours for the
retriever (``--head``, ``--gc_chunk_size``, ...). Numbers out of range are refused by argparse (the ``type=``
validators of :mod:`data_prep.flags`), ``check_args`` rejects combinations that cannot work and ``check_paths`` an
``--output_dir`` that would overwrite an input, all before any model is loaded.
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from pathlib import Path

from data_prep.errors import InputError, read_json_input
from data_prep.flags import fraction, non_negative_float, non_negative_int, positive_float, positive_int
from data_prep.outputs import check_outputs, flag_paths
from retriever.model.compilation import COMPILE_CHOICES
from retriever.model.dtype import add_dtype_argument
from retriever.model.saved import checkpoint_inputs
from retriever.training.mixture import parse_sources
from retriever.training.optim import OPTIMIZERS


def _int_list(text: str) -> list[int]:
    """Comma-separated sizes, each >= 1."""
    return [positive_int(x) for x in text.split(",") if x.strip()]


def _float_list(text: str) -> list[float]:
    """Comma-separated weights, each a finite number >= 0."""
    return [non_negative_float(x) for x in text.split(",") if x.strip()]


def _chunk_size(text: str) -> int | str:
    """``--gc_chunk_size``: 'auto' or an integer >= 0."""
    return text if text == "auto" else non_negative_int(text)


def _memory_fraction(text: str) -> float:
    """A share of GPU memory: more than 0, at most 1."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retriever.train",
        description="Contrastive training of a VLM retriever (dense or multi-vector) with GradCache, under plain "
        "PyTorch, torchrun/DDP or DeepSpeed ZeRO-1/2/3. Launch multi-GPU runs with torchrun or "
        "shell/train_multinode.sh. The final model is saved to OUTPUT_DIR/final.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    io = parser.add_argument_group("model and data")
    io.add_argument("--model_name_or_path", required=True,
                    help="HF checkpoint directory (or hub name where a hub is reachable), or a directory saved by "
                    "this project (heads and adapters included)")
    io.add_argument("--output_dir", required=True, help="checkpoints, logs, loss.png and final/ go here")
    io.add_argument("--train_data", required=True, nargs="+",
                    help="pairs JSONL ({'query', 'pos': [ids], 'neg': [ids]}) or a local HF dataset "
                    "(save_to_disk folder or parquet) with 'query' and image columns; several sources as "
                    "PATH:WEIGHT entries, or one YAML/JSON mixture file (see retriever/training/mixture.py)")
    io.add_argument("--mixture_batches", choices=["homogeneous", "mixed"], default="homogeneous",
                    help="with several sources: every global batch from one source (in-batch negatives of the "
                    "same kind), or batches mixing all sources")
    io.add_argument("--page_store", nargs="*", default=[], help="HDF5 page store(s) that resolve page ids")
    io.add_argument("--image_root", default=None, help="folder of images; page ids are paths relative to it")
    io.add_argument("--image_column", default="image", help="image column of an HF dataset given as --train_data")
    io.add_argument("--image_id_column", default=None,
                    help="column of an HF dataset that identifies its images (default: the row number)")
    io.add_argument("--trust_remote_code", action="store_true",
                    help="allow model code from the checkpoint (needed for MiniCPM-V only)")

    model = parser.add_argument_group("retriever head")
    model.add_argument("--head", choices=["dense", "multi"], default="dense",
                       help="dense: one vector per item; multi: ColBERT-style token vectors scored with MaxSim")
    model.add_argument("--pooling", choices=["last", "mean", "weighted_mean", "cls"], default="last")
    model.add_argument("--projection_dim", type=positive_int, default=None, help="dense: linear projection size")
    model.add_argument("--multi_dim", type=positive_int, default=128, help="multi-vector: token vector size")
    model.add_argument("--matryoshka_dims", type=_int_list, default=None, help="nested sizes, e.g. 1536,768,256")
    model.add_argument("--matryoshka_weights", type=_float_list, default=None, help="loss weight per nested size")
    model.add_argument("--query_prefix", default=None, help="text put before every query (backbone default if unset)")
    model.add_argument("--query_augmentation_tokens", type=non_negative_int, default=None,
                       help="ColPali-style augmentation tokens")
    model.add_argument("--max_pixels", type=positive_int, default=None,
                       help="cap on page image pixels (resolution control)")
    model.add_argument("--attn_implementation", default=None, help="sdpa (default), eager or flash_attention_2")
    add_dtype_argument(model, "float32", "weight dtype at load time (use --bf16 for mixed precision training)",
                       aliases=["--torch_dtype"])

    loss = parser.add_argument_group("loss")
    loss.add_argument("--temperature", type=positive_float, default=0.02)
    loss.add_argument("--maxsim_normalization", choices=["query_length", "none"], default="query_length",
                      help="multi-vector head: divide each MaxSim score by the query's token count before the "
                      "temperature, as colpali-engine's ColbertLoss (default query_length); 'none' keeps raw sums, "
                      "whose logits reach (query tokens / T) and saturate the softmax")
    loss.add_argument("--learnable_temperature", action="store_true", help="learn the logit scale (as InternVL)")
    loss.add_argument("--symmetric_loss", action="store_true", help="add the page->query InfoNCE term")
    loss.add_argument("--num_negatives", type=non_negative_int, default=0, help="hard negatives per query (from 'neg')")
    loss.add_argument("--false_negative_factor", type=positive_float, default=None,
                      help="drop negatives scoring above this factor times the positive's score")

    mode = parser.add_argument_group("what is trained")
    mode.add_argument("--training_mode", choices=["full", "lora", "head"], default="lora")
    mode.add_argument("--freeze_vision", action="store_true",
                      help="freeze the vision tower (GradCache then reuses its first-pass output)")
    mode.add_argument("--lora_r", type=positive_int, default=16)
    mode.add_argument("--lora_alpha", type=positive_int, default=32)
    mode.add_argument("--lora_dropout", type=fraction, default=0.05)
    mode.add_argument("--lora_target_modules", default=None,
                      help="regex over module names to put LoRA on (default: the backbone's attention + MLP "
                      "preset of the language model)")
    mode.add_argument("--lora_vision", action="store_true", help="also put LoRA on the vision tower")

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--per_device_train_batch_size", type=positive_int, default=8, help="queries per rank per batch")
    opt.add_argument("--gradient_accumulation_steps", type=positive_int, default=1,
                     help="contrastive batches per optimizer step (each batch has its own negatives)")
    opt.add_argument("--gc_chunk_size", type=_chunk_size, default=0,
                     help="GradCache chunk size in examples (0 = off; 'auto' = largest that fits "
                     "--gc_memory_fraction of GPU memory)")
    opt.add_argument("--gc_memory_fraction", type=_memory_fraction, default=0.8)
    opt.add_argument("--compile", choices=COMPILE_CHOICES, default="none",
                     help="torch.compile the heads, or the heads and the backbone (all); eager with one warning "
                     "where it cannot compile")
    opt.add_argument("--auto_batch", action="store_true",
                     help="measure the GradCache chunk that fits --gc_memory_fraction of GPU memory (--gc_chunk_size "
                     "auto; on CPU a rule of 8)")
    opt.add_argument("--hparams", type=Path, default=None,
                     help="a python -m retriever.hparams JSON: its values become the defaults of these flags "
                     "(flags given on the command line win)")
    opt.add_argument("--optim", choices=OPTIMIZERS, default="adamw",
                     help="adamw; adamw_fused (torch's fused kernel); adamw_8bit / paged_adamw_8bit (bitsandbytes "
                     "8-bit states; not with DeepSpeed ZeRO-3 or optimizer offload; paged needs CUDA)")
    opt.add_argument("--learning_rate", type=positive_float, default=1e-4)
    opt.add_argument("--weight_decay", type=non_negative_float, default=0.0)
    opt.add_argument("--layer_decay", type=positive_float, default=1.0, help="layer-wise lr decay (1.0 = off)")
    opt.add_argument("--drop_path_rate", type=fraction, default=0.0, help="stochastic depth where the backbone has it")
    opt.add_argument("--lr_scheduler_type", default="linear", help="any transformers schedule name")
    opt.add_argument("--warmup_steps", type=non_negative_int, default=0)
    opt.add_argument("--warmup_ratio", type=fraction, default=0.0, help="used when --warmup_steps is 0")
    opt.add_argument("--max_steps", type=int, default=-1, help="optimizer steps (overrides --num_train_epochs)")
    opt.add_argument("--num_train_epochs", type=float, default=1.0)
    opt.add_argument("--max_grad_norm", type=non_negative_float, default=1.0, help="0 disables clipping")
    opt.add_argument("--bf16", action="store_true", help="bf16 mixed precision (autocast, or DeepSpeed bf16)")
    opt.add_argument("--gradient_checkpointing", action="store_true")
    opt.add_argument("--deepspeed", default=None, help="DeepSpeed JSON config, e.g. ds_configs/zero2.json")
    opt.add_argument("--seed", type=int, default=42)

    ev = parser.add_argument_group("evaluation during training (retriever/training/evaluation.py)")
    ev.add_argument("--eval_data", default=None,
                    help="held-out pairs JSONL (corpus: --eval_page_store) or any eval.retrieval task (BEIR/ViDoRe "
                    "folder, hub name, MTEB task name); evaluated on all ranks with the native evaluator")
    ev.add_argument("--eval_page_store", default=None,
                    help="page store that is the corpus of --eval_data (default for a pairs JSONL: the first "
                    "--page_store)")
    ev.add_argument("--eval_split", default="test", help="split of an --eval_data dataset")
    ev.add_argument("--eval_steps", type=non_negative_int, default=0,
                    help="evaluate every N optimizer steps (0: only after the last step); needs --eval_data")
    ev.add_argument("--eval_batch_size", type=positive_int, default=8, help="encoder batch size of the evaluation")
    ev.add_argument("--save_best", action="store_true",
                    help="keep the encoder with the best --metric_for_best in OUTPUT_DIR/best (with best.json)")
    ev.add_argument("--metric_for_best", default="ndcg_at_10",
                    help="evaluator metric that decides the best checkpoint (higher is better), e.g. recall_at_10")

    run = parser.add_argument_group("checkpoints and logging")
    run.add_argument("--save_steps", type=non_negative_int, default=500, help="0: no checkpoints, only final/")
    run.add_argument("--save_total_limit", type=non_negative_int, default=2,
                     help="checkpoints kept (oldest deleted; 0: all)")
    run.add_argument("--resume_from_checkpoint", default=None,
                     help="a checkpoint-N directory, or 'latest' for the newest complete one in --output_dir")
    run.add_argument("--logging_steps", type=positive_int, default=1)
    run.add_argument("--report_to", choices=["tensorboard", "wandb", "none"], nargs="+", default=["tensorboard"])
    run.add_argument("--run_name", default=None)
    run.add_argument("--dataloader_num_workers", type=non_negative_int, default=2)
    run.add_argument("--disable_tqdm", action="store_true")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    if known.hparams is not None:
        parser.set_defaults(**read_hparams(known.hparams, parser))
    args = parser.parse_args(argv)
    if args.auto_batch:
        args.gc_chunk_size = "auto"
    try:
        check_args(args)
    except ValueError as err:
        parser.error(str(err))
    check_paths(args)
    return args


def read_hparams(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The training-flag values of a ``retriever.hparams`` JSON (its ``flags``), checked against the parser."""
    data = read_json_input(path, "hyperparameter file (python -m retriever.hparams --out)")
    flags = data.get("flags") if isinstance(data, dict) else None
    if not isinstance(flags, dict):
        raise InputError(f"--hparams {path}: no 'flags' mapping (write it with python -m retriever.hparams --out)")
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(flags) - known)
    if unknown:
        raise InputError(f"--hparams {path}: not retriever.train flags: {', '.join(unknown)}")
    return flags


def check_args(args: argparse.Namespace) -> None:
    """Reject flag combinations that cannot work, before anything is loaded."""
    if args.max_steps <= 0 and args.num_train_epochs <= 0:
        raise ValueError("give --max_steps > 0 or --num_train_epochs > 0")
    if args.matryoshka_weights and len(args.matryoshka_weights) != len(args.matryoshka_dims or []):
        raise ValueError("--matryoshka_weights needs one weight per --matryoshka_dims entry")
    if args.bf16 and args.dtype == "float64":
        raise ValueError("--bf16 and --dtype float64 exclude each other")
    if args.freeze_vision and args.lora_vision:
        raise ValueError("--freeze_vision and --lora_vision exclude each other")
    if (args.eval_steps or args.save_best or args.eval_page_store) and not args.eval_data:
        raise ValueError("--eval_steps, --save_best and --eval_page_store need --eval_data")
    if args.training_mode != "lora" and args.lora_vision:
        raise ValueError("--lora_vision needs --training_mode lora")


def check_paths(args: argparse.Namespace) -> None:
    """Refuse an ``--output_dir`` that is, lies in or contains an input (the model or its LoRA base, a training
    source, a page store, the evaluation data), or that cannot be written: writing ``final/`` and checkpoints there
    could destroy the input."""
    sources = [s for s in args.train_data if Path(s).exists()] + [s.path for s in parse_sources(args.train_data)]
    eval_data = args.eval_data if args.eval_data and Path(args.eval_data).exists() else None
    inputs = {**checkpoint_inputs("--model_name_or_path", args.model_name_or_path),
              **flag_paths("--train_data", list(dict.fromkeys(sources))), **flag_paths("--page_store", args.page_store),
              "--eval_data": eval_data, "--eval_page_store": args.eval_page_store}
    check_outputs({"--output_dir": args.output_dir}, inputs, directories=("--output_dir",))
