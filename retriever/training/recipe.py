"""The training recipe behind ``python -m retriever.train``: contrastive training of a VLM retriever, in one file.

Setup, in order: distributed environment -> encoder (backbone + head, training mode) -> training pairs, validated
against the page sources before anything else runs -> loss -> strategy (plain, DDP or a DeepSpeed engine, which
owns optimizer, schedule and clipping) -> GradCache -> resume. Then the loop: for every optimizer step, draw
``--gradient_accumulation_steps`` global batches (planned deterministically per seed and epoch, this rank's share
of each), run ``GradCache.step`` on each (forward + backward, grads accumulate), then ``strategy.optimizer_step()``;
log, checkpoint every ``--save_steps``, keep the newest ``--save_total_limit``. At the end the encoder is written to
``OUTPUT_DIR/final`` in its own directory format and the loss curve to ``OUTPUT_DIR/loss.png``.

We write a loop instead of subclassing HF ``Trainer``: one optimizer step here is several forward/backward passes
over GradCache chunks with a cross-rank loss, and its engine-level contract (one DeepSpeed boundary per global
batch, DDP sync on the last chunk only) is exactly what ``Trainer``'s ``training_step``/accumulation logic decides
on its own. docs/ARCHITECTURE.md has the longer argument.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from data_prep.errors import InputError, cli, stop_on_full_disk
from data_prep.outputs import lock_directory, write_text_atomic
from retriever.model.compilation import compile_encoder
from retriever.model.encoder import RetrieverEncoder, text_hidden_size
from retriever.model.identity import checkpoint_identity
from retriever.model.saved import TRAINING_ARGS_FILE, load_encoder, save_encoder
from retriever.model.training_modes import LoraSettings
from retriever.page_sources import ImageFolder, PageResolver, StorePages
from retriever.pairs import is_hf_dataset, load_hf_pairs, read_jsonl_pairs, validate_pairs
from retriever.process_group import RankInfo, barrier, joined_process_group
from retriever.training.args import parse_args
from retriever.training.strategy import Strategy, build_strategy
from retriever.training.batching import EpochBatches
from retriever.training.environment import record_environment
from retriever.training.checkpoints import TrainerState, load_checkpoint, resolve_resume, save_checkpoint
from retriever.training.ds_config import TrainingShape, load_deepspeed_config, resolve_deepspeed_config
from retriever.training.evaluation import TrainingEvaluation, load_eval_data
from retriever.training.gradcache import GradCache, auto_chunk_size
from retriever.training.logs import TrainLog
from retriever.training.losses import ContrastiveLoss
from retriever.training.mixture import TrainingData, parse_sources
from retriever.training.optim import (build_scheduler, check_optimizer, optimizer_factory, parameter_groups,
                                      set_drop_path)

logger = logging.getLogger("retriever.train")
# the encoder settings a checkpoint's weights fit (prompts and resolution may change between resumes)
RUN_ENCODER_SETTINGS = ("backbone", "head", "pooling", "projection_dim", "multi_dim", "normalize",
                        "matryoshka_dims")


@cli
def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with joined_process_group(timedelta(minutes=30), args.deepspeed is not None) as env, \
            lock_output_dir(Path(args.output_dir), env):
        return train(args, env)


def lock_output_dir(output_dir: Path, env: RankInfo) -> contextlib.AbstractContextManager[IO[str] | None]:
    """The global rank 0 creates ``--output_dir`` and holds its lock for the whole run, so that a second training
    into the same directory stops with one line (exit 2) instead of interleaving its checkpoints and logs with
    this one's."""
    if env.rank != 0:
        return contextlib.nullcontext()
    output_dir.mkdir(parents=True, exist_ok=True)
    return lock_directory(output_dir, f"{output_dir}: another training run is writing into this --output_dir "
                          "(it holds its .lock); wait for it to end, or train into another --output_dir")


def train(args, env: RankInfo) -> Path:
    """Set up (module docstring), train, and write ``OUTPUT_DIR/final``, whose path is returned."""
    torch.manual_seed(args.seed)
    ds_config = load_deepspeed_config(args.deepspeed) if args.deepspeed else None
    check_optimizer(args.optim, ds_config, env.device.type == "cuda")
    data, resolver = load_training_data(args)
    steps = total_steps(args, env, data)
    encoder = build_encoder(args)
    settings = run_settings(args, encoder)
    loss = build_loss(args)
    strategy = build_training_strategy(args, env, encoder, loss, steps, ds_config)
    gradcache = build_gradcache(args, encoder, loss, strategy, env)
    state = TrainerState()
    resume = resolve_resume(args.resume_from_checkpoint, args.output_dir)
    if resume is not None:
        state = load_checkpoint(strategy, resume, settings)
        _info(env, f"resumed from {resume} at step {state.global_step}")
    evaluation = build_evaluation(args, env)
    record_environment(args.output_dir, env, state.global_step)
    train_loop(args, env, encoder, data, resolver, strategy, gradcache, state, steps, settings, evaluation)
    return save_final(args, env, encoder, strategy)


def load_training_data(args) -> tuple[TrainingData, PageResolver]:
    """Pairs of every source and the page sources that resolve their ids; every id is checked before training."""
    sources = [StorePages(path) for path in args.page_store]
    if args.image_root:
        sources.append(ImageFolder(args.image_root))
    mixture, parts = parse_sources(args.train_data), []
    for source in mixture:
        if is_hf_dataset(source.path):
            pairs, pages = load_hf_pairs(source.path, args.image_column, args.image_id_column)
            sources.insert(0, pages)
        else:
            pairs = read_jsonl_pairs(source.path)
        parts.append(pairs)
    resolver = PageResolver(sources)
    for source, pairs in zip(mixture, parts):
        validate_pairs(pairs, resolver, source.path)
    return TrainingData.from_parts(mixture, parts), resolver


def build_encoder(args) -> RetrieverEncoder:
    """The encoder to train: a directory this project saved keeps its own settings; a plain VLM checkpoint gets
    fresh heads built from the head flags."""
    lora = LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                        include_vision=args.lora_vision, target_modules=args.lora_target_modules)
    encoder = load_encoder(
        args.model_name_or_path, settings=_head_settings(args), training_mode=args.training_mode, lora=lora,
        freeze_vision=args.freeze_vision, dtype=args.dtype, attn_implementation=args.attn_implementation,
        trust_remote_code=args.trust_remote_code,
    )
    if args.drop_path_rate > 0 and set_drop_path(encoder, args.drop_path_rate) == 0:
        logger.warning("--drop_path_rate: this backbone has no drop-path modules; the flag has no effect")
    if args.gradient_checkpointing:
        encoder.enable_activation_checkpointing()
    compile_encoder(encoder, args.compile)
    return encoder.train()


def run_settings(args, encoder: RetrieverEncoder) -> dict[str, Any]:
    """What a checkpoint's weights and optimizer state fit, recorded in every checkpoint (a resume with other
    settings is refused): the base model's identity (its name for a hub id), the encoder's architecture (backbone,
    head, pooling, dimensions), the training mode, frozen vision, LoRA, the learnable temperature (a loss
    parameter) and whether DeepSpeed wrote the state. Prompts and resolution may change between resumes."""
    model, config = args.model_name_or_path, asdict(encoder.config)
    return {"base model": checkpoint_identity(model) or str(model), **{k: config[k] for k in RUN_ENCODER_SETTINGS},
            "--training_mode": args.training_mode, "--freeze_vision": args.freeze_vision,
            "lora": encoder.lora.to_dict() if encoder.is_peft and encoder.lora else None,
            "--learnable_temperature": args.learnable_temperature, "deepspeed": args.deepspeed is not None}


def _head_settings(args) -> dict:
    """EncoderConfig fields from the head flags (used for fresh heads on a plain VLM checkpoint)."""
    overrides = {
        "query_prefix": args.query_prefix, "query_augmentation_tokens": args.query_augmentation_tokens,
        "max_pixels": args.max_pixels,
    }
    return {"head": args.head, "pooling": args.pooling, "projection_dim": args.projection_dim,
            "multi_dim": args.multi_dim, "matryoshka_dims": args.matryoshka_dims,
            **{key: value for key, value in overrides.items() if value is not None}}


def build_loss(args) -> ContrastiveLoss:
    return ContrastiveLoss(
        temperature=args.temperature, learnable_temperature=args.learnable_temperature,
        symmetric=args.symmetric_loss, matryoshka_dims=args.matryoshka_dims,
        matryoshka_weights=args.matryoshka_weights, false_negative_factor=args.false_negative_factor,
        normalize_query_length=args.head == "multi" and args.maxsim_normalization == "query_length",
    )


def plan(args, env: RankInfo, data: TrainingData, epoch: int) -> list:
    """The global batches of ``epoch`` (deterministic in seed and epoch; see training/mixture.py)."""
    return data.plan_epoch(args.per_device_train_batch_size * env.world, args.num_negatives, args.seed, epoch,
                           args.mixture_batches == "homogeneous")


def steps_per_epoch(args, env: RankInfo, data: TrainingData) -> int:
    steps = len(plan(args, env, data, 0)) // args.gradient_accumulation_steps
    if steps == 0:
        raise InputError(
            f"{' '.join(args.train_data)}: {len(data.pairs)} pairs do not fill one optimizer step of "
            f"{args.per_device_train_batch_size} x {env.world} ranks x {args.gradient_accumulation_steps} "
            "accumulation steps (pairs sharing pages cannot share a batch)"
        )
    return steps


def total_steps(args, env: RankInfo, data: TrainingData) -> int:
    if args.max_steps > 0:
        return args.max_steps
    return math.ceil(args.num_train_epochs * steps_per_epoch(args, env, data))


def build_training_strategy(args, env: RankInfo, encoder: RetrieverEncoder, loss: ContrastiveLoss,
                           steps: int, ds_config: dict | None = None) -> Strategy:
    """Optimizer groups, schedule over ``steps`` optimizer steps and the strategy (plain / DDP / DeepSpeed, with
    ``ds_config`` as read from ``--deepspeed``, its "auto" fields resolved here)."""
    warmup = args.warmup_steps or math.ceil(args.warmup_ratio * steps)

    def scheduler_factory(optimizer):
        return build_scheduler(optimizer, args.lr_scheduler_type, warmup, steps)

    if ds_config is not None:
        shape = TrainingShape(
            micro_batch_size=args.per_device_train_batch_size, gradient_accumulation_steps=args.gradient_accumulation_steps,
            world_size=env.world, max_grad_norm=args.max_grad_norm, bf16=args.bf16,
            hidden_size=text_hidden_size(encoder.model),
        )
        ds_config = resolve_deepspeed_config(ds_config, shape, args.deepspeed)
    named = list(encoder.named_parameters()) + [(f"loss.{n}", p) for n, p in loss.named_parameters()]
    groups = parameter_groups(named, args.learning_rate, args.weight_decay, args.layer_decay)
    if not ds_config:
        encoder.to(env.device)
        loss.to(env.device)
    return build_strategy(
        encoder, loss=loss, param_groups=groups,
        optimizer_factory=optimizer_factory(args.optim, args.learning_rate, args.weight_decay),
        scheduler_factory=scheduler_factory, deepspeed_config=ds_config,
        max_grad_norm=args.max_grad_norm or None, ddp=env.world > 1 and not ds_config,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
    )


def build_gradcache(args, encoder: RetrieverEncoder, loss: ContrastiveLoss, strategy: Strategy,
                    env: RankInfo) -> GradCache:
    chunk = args.gc_chunk_size
    if chunk == "auto":
        chunk = auto_chunk_size(encoder, per_device_batch_size=args.per_device_train_batch_size,
                                memory_fraction=args.gc_memory_fraction, device=env.device)
        _info(env, f"--gc_chunk_size auto: {chunk}")
    return GradCache(encoder, loss, strategy, chunk_size=chunk or None, reuse_frozen_vision=args.freeze_vision)


def batch_stream(args, env: RankInfo, encoder, data: TrainingData, resolver: PageResolver,
                 state: TrainerState) -> Iterator[tuple[int, int, dict]]:
    """This rank's batches from where ``state`` points, epoch after epoch: ``(epoch, index in epoch, batch)``."""
    epoch, start = state.epoch, state.batch_in_epoch
    while True:
        batches = EpochBatches(plan(args, env, data, epoch), start, env.rank, env.world, data.pairs,
                               resolver.get_image, encoder.prepare_queries, encoder.prepare_pages)
        # its own generator: a DataLoader otherwise draws its workers' base seed from the global RNG, which would
        # shift the dropout stream of a resumed run against an uninterrupted one
        loader = DataLoader(batches, batch_size=None, num_workers=args.dataloader_num_workers,
                            generator=torch.Generator().manual_seed(args.seed + epoch))
        for i, batch in enumerate(loader):
            yield epoch, start + i, batch
        epoch, start = epoch + 1, 0


def build_evaluation(args, env: RankInfo) -> TrainingEvaluation | None:
    """The evaluation during training that --eval_data asks for (loaded once, before the first step)."""
    if not args.eval_data:
        return None
    page_store = args.eval_page_store or (args.page_store[0] if args.eval_data.endswith(".jsonl") and args.page_store
                                          else None)
    data = load_eval_data(args.eval_data, args.eval_split, page_store)
    return TrainingEvaluation(data, env, args.output_dir, args.eval_steps, args.eval_batch_size,
                              args.metric_for_best, args.save_best)


def train_loop(args, env: RankInfo, encoder: RetrieverEncoder, data: TrainingData, resolver: PageResolver,
               strategy: Strategy, gradcache: GradCache, state: TrainerState, steps: int, settings: dict[str, Any],
               evaluation: TrainingEvaluation | None = None) -> None:
    log = TrainLog(args.output_dir, env.rank == 0, [r for r in args.report_to if r != "none"], args.run_name,
                   vars(args), start_step=state.global_step)
    stream = batch_stream(args, env, encoder, data, resolver, state)
    autocast = (torch.autocast(env.device.type, dtype=torch.bfloat16)
                if args.bf16 and not args.deepspeed else contextlib.nullcontext())
    progress = tqdm(total=steps, initial=state.global_step, desc="training", unit="step",
                    disable=env.rank != 0 or args.disable_tqdm)
    while state.global_step < steps:
        started, losses, digest, by_source = time.perf_counter(), [], hashlib.sha1(), {}
        for micro in range(args.gradient_accumulation_steps):
            epoch, index, batch = next(stream)
            with autocast:
                # inputs stay on the CPU: the encoder moves each GradCache chunk to the device as it encodes it
                out = gradcache.step(batch["query_inputs"], batch["page_inputs"], batch["positives"],
                                     sync=micro == args.gradient_accumulation_steps - 1)
            losses.append(float(out["loss"]))
            _add_source_loss(by_source, data, batch["pair_indices"], losses[-1])
            digest.update("\n".join(batch["page_ids"]).encode())
            state.epoch, state.batch_in_epoch = epoch, index + 1
        grad_norm = strategy.optimizer_step()
        state.global_step += 1
        elapsed = time.perf_counter() - started
        pairs_done = args.per_device_train_batch_size * env.world * args.gradient_accumulation_steps
        metrics = {"loss": sum(losses) / len(losses), "lr": _current_lr(strategy.scheduler, args),
                   "grad_norm": float(grad_norm) if grad_norm is not None else None,
                   "pairs_per_second": pairs_done / elapsed, "epoch": state.epoch,
                   "pages_sha1": digest.hexdigest(), **_source_losses(by_source)}
        evaluated = evaluation is not None and evaluation.due(state.global_step, steps)
        if evaluated:
            metrics.update(evaluation.run(state.global_step, encoder, strategy))
        if state.global_step % args.logging_steps == 0 or state.global_step == steps or evaluated:
            log.log(state.global_step, metrics)
        progress.set_postfix(loss=f"{metrics['loss']:.4f}", pairs_s=f"{metrics['pairs_per_second']:.1f}")
        progress.update(1)
        if args.save_steps > 0 and state.global_step % args.save_steps == 0 and state.global_step < steps:
            save_checkpoint(strategy, args.output_dir, state, args.save_total_limit, settings)
    progress.close()
    log.close()


def _add_source_loss(by_source: dict[str, list[float]], data: TrainingData, pair_indices: list[int],
                     loss: float) -> None:
    """Record a batch's loss under its source when all its queries come from one (homogeneous batches)."""
    names = {data.sources[data.source_of(i)].name for i in pair_indices}
    if len(data.sources) > 1 and len(names) == 1:
        by_source.setdefault(names.pop(), []).append(loss)


def _source_losses(by_source: dict[str, list[float]]) -> dict[str, float]:
    return {f"loss_{name}": sum(values) / len(values) for name, values in sorted(by_source.items())}


def save_final(args, env: RankInfo, encoder: RetrieverEncoder, strategy: Strategy) -> Path:
    """Write the trained encoder to OUTPUT_DIR/final (ZeRO-3 partitions are gathered first)."""
    final = Path(args.output_dir) / "final"
    kept = ("the checkpoints are intact; free space and run the same command with --resume_from_checkpoint latest "
            "(steps after the last checkpoint are trained again)")
    with strategy.gathered_parameters():
        if env.rank == 0:
            with stop_on_full_disk(final, kept):
                save_encoder(encoder, final)
                write_text_atomic(final / TRAINING_ARGS_FILE,
                                  json.dumps(vars(args), indent=2, sort_keys=True, default=str) + "\n")
    barrier()
    _info(env, f"saved the trained encoder to {final}")
    return final


def _current_lr(scheduler, args) -> float:
    return float(scheduler.get_last_lr()[0]) if scheduler is not None else args.learning_rate


def _info(env: RankInfo, message: str) -> None:
    if env.rank == 0:
        logger.info(message)
