"""Benchmark: time per pair and peak memory of plain vs GradCache contrastive steps, total batch 64 -> 4096.

What it measures
----------------
* ``plain``: one forward + backward of the whole batch (``GradCache`` with ``chunk_size=None``).
* ``gradcache``: the same batch through GradCache with ``--chunk`` examples per chunk.
* ``reuse``: GradCache with a frozen vision tower, its first-pass output replayed (``reuse_frozen_vision``)
  or recomputed, to measure the gain of reuse.
* ``loss``: the multi-vector (MaxSim) loss alone, forward + backward, on random representations, with
  the chunked score computation (the naive ``[B, B, Lq, Ld]`` tensor's size is printed for comparison).

Each configuration runs in its own subprocess so that peak memory is clean: peak RSS on CPU, and
``torch.cuda.max_memory_allocated`` on GPU. A step is timed after a warm-up step at chunk size; the time
covers ``GradCache.step`` (forward, loss, backward), not the optimizer update (identical for both).

Models: on CPU the tiny random-weight Qwen2-VL of :mod:`retriever.model.tiny_checkpoints` (pages of 112x112 px
= 16 visual tokens); on GPU (``--device cuda``) a random-weight model with Qwen2-VL-2B's shapes (text: 28 layers,
hidden 1536; vision: 32 layers, 1280) and pages of 768 visual tokens (896x672 px), in bf16. Every page of a
batch is the same prepared page repeated (the inputs' content does not change the cost).

Usage: ``python bench/gradcache.py`` (CPU sweep, about 10 minutes on 2 cores);
``python bench/gradcache.py --device cuda --gradient_checkpointing`` on a GPU machine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

QWEN2_VL_2B = dict(  # Qwen/Qwen2-VL-2B-Instruct's config.json shapes
    text=dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
              num_key_value_heads=2, max_position_embeddings=32768,
              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
    vision=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
                spatial_merge_size=2, temporal_patch_size=2),
)
GPU_PAGE = (672, 896)  # 48 x 64 patches of 14 px -> 3072 patches -> 768 visual tokens after 2x2 merging
CPU_PAGE = (112, 112)  # 8 x 8 patches -> 16 visual tokens


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batches", default="64,256,1024,4096", help="total batches (pairs) for GradCache")
    parser.add_argument("--plain_batches", default=None,
                        help="batches for the plain step (default: 64,256 on CPU; 8 on GPU)")
    parser.add_argument("--chunk", type=int, default=None, help="GradCache chunk size (default: 64 CPU, 8 GPU)")
    parser.add_argument("--head", choices=["dense", "multi"], default="dense")
    parser.add_argument("--gradient_checkpointing", action="store_true", help="activation checkpointing on")
    parser.add_argument("--reuse_batch", type=int, default=256,
                        help="batch for the frozen-vision reuse comparison (0 = skip)")
    parser.add_argument("--loss_batches", default="256,1024",
                        help="batches for the multi-vector loss memory measurement (empty = skip)")
    parser.add_argument("--dense_loss_batches", default="64,4096",
                        help="batches for the dense loss memory measurement: its [B, B] score matrices (empty = skip)")
    parser.add_argument("--dense_loss_dim", type=int, default=64, help="dense embedding size for that measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    parser.add_argument("--model_dir", type=Path, default=None, help="reuse a checkpoint built by an earlier run")
    parser.add_argument("--json", type=Path, default=None, help="also write all results here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------ model
def build_model(device: str, out: Path) -> Path:
    """The tiny checkpoint (CPU) or a random-weight Qwen2-VL-2B-shaped one (GPU), written to ``out``."""
    from retriever.model.tiny_checkpoints import build_tiny

    if device == "cpu":
        return build_tiny("qwen2_vl", out)
    from transformers import AutoModelForImageTextToText, Qwen2VLConfig, Qwen2VLImageProcessorPil

    from retriever.model.tiny_checkpoints import (QWEN_CHAT_TEMPLATE, QWEN_SPECIALS, byte_level_tokenizer,
                                                  vocab_size_for)

    tokenizer = byte_level_tokenizer(QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>")
    ids = tokenizer.convert_tokens_to_ids
    text = QWEN2_VL_2B["text"] | dict(vocab_size=vocab_size_for(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                      eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    config = Qwen2VLConfig(text_config=text, vision_config=QWEN2_VL_2B["vision"], tie_word_embeddings=True,
                           image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                           vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    pixels = GPU_PAGE[0] * GPU_PAGE[1]
    Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": pixels}, patch_size=14,
                             temporal_patch_size=2, merge_size=2).save_pretrained(out)
    return out


def build_encoder(cfg: dict[str, Any]):
    from retriever.model.encoder import EncoderConfig
    from retriever.model.saved import load_encoder

    dtype = torch.bfloat16 if cfg["device"] == "cuda" else torch.float32
    enc = load_encoder(cfg["model_dir"], EncoderConfig(backbone="qwen2_vl", head=cfg["head"]),
                                           dtype=dtype, freeze_vision=cfg.get("freeze_vision", False))
    enc.to(cfg["device"]).train()
    if cfg["gradient_checkpointing"]:
        enc.enable_activation_checkpointing()
    return enc


def repeat_inputs(inputs: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """``n`` copies of a one-example Qwen batch (``pixel_values`` is flattened patches: repeated as rows)."""
    return {k: v.repeat(n, *([1] * (v.ndim - 1))) for k, v in inputs.items()}


def make_batch(enc, n: int, device: str):
    from PIL import Image

    page = Image.new("RGB", GPU_PAGE if device == "cuda" else CPU_PAGE, (200, 180, 160))
    q = repeat_inputs(enc.prepare_queries(["what was the total revenue reported in the third quarter"]), n)
    p = repeat_inputs(enc.prepare_pages([page]), n)
    return q, p, torch.eye(n, dtype=torch.bool)


# ------------------------------------------------------------------------------------------ one run
def peak_memory_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_step_config(cfg: dict[str, Any]) -> dict[str, Any]:
    from retriever.training.strategy import build_strategy
    from retriever.training.gradcache import GradCache
    from retriever.training.losses import ContrastiveLoss

    enc = build_encoder(cfg)
    backend = build_strategy(enc, optimizer_factory=lambda groups: torch.optim.SGD(groups, lr=0.0))
    loss = ContrastiveLoss(temperature=0.02).to(cfg["device"])
    chunk = cfg["chunk"] if cfg["mode"] != "plain" else None
    gc = GradCache(enc, loss, backend, chunk, reuse_frozen_vision=cfg.get("reuse", False))
    warm = make_batch(enc, cfg["chunk"] if chunk else cfg["batch"], cfg["device"])
    gc.step(*warm)  # warm-up (allocator, kernels) at chunk size
    enc.zero_grad(set_to_none=True)
    del warm
    batch = make_batch(enc, cfg["batch"], cfg["device"])
    if cfg["device"] == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    steps = max(1, min(4, 2048 // cfg["batch"]))
    walls, cpus = [], []
    for _ in range(steps):
        wall, cpu = time.perf_counter(), time.process_time()
        gc.step(*batch)
        if cfg["device"] == "cuda":
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        enc.zero_grad(set_to_none=True)
    inputs = sum(v.numel() * v.element_size() for part in batch[:2] for v in part.values())
    return {"ms_per_pair": 1000 * min(walls) / cfg["batch"], "cpu_ms_per_pair": 1000 * min(cpus) / cfg["batch"],
            "step_s": min(walls), "steps": steps, "peak_mib": peak_memory_mib(cfg["device"]),
            "inputs_mib": inputs / 2**20, "cached_reps_mib": cached_reps_mib(enc, cfg)}


@torch.no_grad()
def cached_reps_mib(enc, cfg: dict[str, Any]) -> float:
    """Size of the representations GradCache keeps for the whole batch (one query + one page per pair)."""
    q, p, _ = make_batch(enc, 1, cfg["device"])
    size = 0
    for reps in (enc(q), enc(p)):
        tensor = reps.emb if hasattr(reps, "emb") else reps
        size += tensor.numel() * 4  # the loss works on float32 copies
    return cfg["batch"] * size / 2**20


def run_loss_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The loss alone, forward + backward on random reps: multi-vector (B queries x 16 tokens, B pages x 64
    tokens, dim 128, chunked MaxSim) or dense (``loss_dense``: dim ``cfg["dim"]``, the [B, B] score matrices)."""
    from retriever.model.embeddings import MultiVector
    from retriever.training.losses import ContrastiveLoss

    n, lq, ld, dim = cfg["batch"], 16, 64, 128
    gen = torch.Generator().manual_seed(0)
    if cfg["mode"] == "loss_dense":
        q, p = (torch.nn.functional.normalize(torch.randn(n, cfg["dim"], generator=gen), dim=-1)
                .to(cfg["device"]).requires_grad_() for _ in range(2))
        base = peak_memory_mib(cfg["device"])
        start = time.perf_counter()
        ContrastiveLoss()(q, p, torch.eye(n, dtype=torch.bool, device=cfg["device"])).backward()
        return {"step_s": time.perf_counter() - start, "peak_mib": peak_memory_mib(cfg["device"]),
                "peak_before_mib": base, "score_matrix_mib": n * n * 4 / 2**20}

    def reps(length: int) -> MultiVector:
        emb = torch.nn.functional.normalize(torch.randn(n, length, dim, generator=gen), dim=-1)
        return MultiVector(emb.to(cfg["device"]).requires_grad_(), torch.ones(n, length, dtype=torch.bool,
                                                                              device=cfg["device"]))

    q, p = reps(lq), reps(ld)
    base = peak_memory_mib(cfg["device"])
    start = time.perf_counter()
    ContrastiveLoss(score_chunk_size=64)(q, p, torch.eye(n, dtype=torch.bool, device=cfg["device"])).backward()
    return {"step_s": time.perf_counter() - start, "peak_mib": peak_memory_mib(cfg["device"]),
            "peak_before_mib": base, "reps_mib": 2 * n * (lq + ld) * dim * 4 / 2**20,
            "naive_block_gib": n * n * lq * ld * 4 / 2**30}


def child(cfg: dict[str, Any]) -> None:
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    result = run_loss_config(cfg) if cfg["mode"].startswith("loss") else run_step_config(cfg)
    print("RESULT " + json.dumps({**cfg, **result}), flush=True)


# ------------------------------------------------------------------------------------------ sweep
def configurations(args: argparse.Namespace, model_dir: Path) -> list[dict[str, Any]]:
    gpu = args.device == "cuda"
    chunk = args.chunk or (8 if gpu else 64)
    plain = args.plain_batches if args.plain_batches is not None else ("8" if gpu else "64,256")
    base = dict(device=args.device, head=args.head, chunk=chunk, threads=args.threads, model_dir=str(model_dir),
                gradient_checkpointing=args.gradient_checkpointing)
    configs = [base | dict(mode="plain", batch=int(b)) for b in plain.split(",") if b]
    configs += [base | dict(mode="gradcache", batch=int(b)) for b in args.batches.split(",") if b]
    if args.reuse_batch:
        configs += [base | dict(mode="frozen_vision", batch=args.reuse_batch, freeze_vision=True, reuse=r)
                    for r in (False, True)]
    configs += [base | dict(mode="loss", batch=int(b)) for b in args.loss_batches.split(",") if b]
    configs += [base | dict(mode="loss_dense", batch=int(b), dim=args.dense_loss_dim)
                for b in args.dense_loss_batches.split(",") if b]
    return configs


def run_child(cfg: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {**cfg, "error": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(lines[-1][len("RESULT "):])


def describe(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"| {r['mode']} | {r['batch']} | failed: {r['error'].splitlines()[-1] if r['error'] else '?'} |"
    if r["mode"] == "loss_dense":
        return (f"| loss (dense, dim {r['dim']}) | {r['batch']} | step {r['step_s']:.2f} s | peak {r['peak_mib']:.0f} MiB "
                f"(before {r['peak_before_mib']:.0f}) | one [B, B] matrix {r['score_matrix_mib']:.1f} MiB |")
    if r["mode"] == "loss":
        return (f"| loss (MaxSim, chunked) | {r['batch']} | step {r['step_s']:.2f} s | peak {r['peak_mib']:.0f} MiB "
                f"(before {r['peak_before_mib']:.0f}, reps {r['reps_mib']:.1f}) | naive block {r['naive_block_gib']:.1f} GiB |")
    label = r["mode"] + (f" reuse={r['reuse']}" if r["mode"] == "frozen_vision" else "")
    chunk = "-" if r["mode"] == "plain" else r["chunk"]
    cached = f"{r['cached_reps_mib']:.2f}"
    return (f"| {label} | {r['batch']} | {chunk} | {r['ms_per_pair']:.2f} | {r['cpu_ms_per_pair']:.2f} | "
            f"{r['peak_mib']:.0f} | {r['inputs_mib']:.0f} | {cached} |")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or build_model(args.device, Path(tmp) / "model")
        print(f"command: python bench/gradcache.py {' '.join(argv if argv is not None else sys.argv[1:])}")
        print(f"torch {torch.__version__}, threads per run {args.threads}, device {args.device}, "
              f"load average at start {os.getloadavg()[0]:.1f}")
        print("| mode | batch | chunk | wall ms/pair (min) | CPU ms/pair (min) | peak MiB | inputs MiB | cached reps MiB |")
        print("|---|---|---|---|---|---|---|---|")
        results = []
        for cfg in configurations(args, model_dir):
            results.append(run_child(cfg))
            print(describe(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
