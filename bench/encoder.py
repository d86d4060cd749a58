"""Encoder speed: input building, forward (inference) and forward+backward (training) per backbone.

For each architecture, builds the tiny offline checkpoint (or loads ``--model DIR``, a real checkpoint, for
GPU runs), then times on the same ``--pages`` synthetic page images (random pixels, sizes varying around
``--size``):
  - ``prepare``: ``prepare_pages`` (image processor + tokenization + padding), pages/s;
  - ``forward``: ``encode``-style forward under ``torch.no_grad`` in eval mode, pages/s;
  - ``train step``: forward + backward of a sum of the embeddings in ``full`` mode, pages/s;
and reports the mean tokens per page.  Best of ``--repeats`` runs; prints the command that reproduces it.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from retriever.model.dtype import add_dtype_argument
from retriever.model.encoder import EncoderConfig
from retriever.model.compilation import COMPILE_CHOICES, compile_encoder
from retriever.model.saved import load_encoder
from retriever.model.tiny_checkpoints import BUILDERS, VARIANT_OF, build_tiny


def make_pages(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    shapes = [(int(size * rng.uniform(0.8, 1.3)), int(size * rng.uniform(0.6, 1.0))) for _ in range(n)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_arch(path: Path, arch: str | None, args: argparse.Namespace) -> dict:
    config = EncoderConfig(backbone=VARIANT_OF.get(arch, arch), head=args.head) if arch else None
    encoder = load_encoder(path, config, dtype=args.dtype, trust_remote_code=args.trust_remote_code).to(args.device)
    compile_encoder(encoder, args.compile)
    pages = make_pages(args.pages, args.size)
    batches = [pages[i:i + args.batch_size] for i in range(0, len(pages), args.batch_size)]
    prepared = [encoder.prepare_pages(b) for b in batches]

    def forward():
        with torch.no_grad():
            for batch in prepared:
                encoder(batch)

    def train_step():
        encoder.train()
        for batch in prepared:
            out = encoder(batch)
            (out.emb if isinstance(out, tuple) else out).float().sum().backward()
        encoder.eval()
        encoder.zero_grad(set_to_none=True)

    forward()  # warm-up
    result = {
        "tokens_per_page": float(np.mean([int(b["attention_mask"].sum()) / b["attention_mask"].shape[0]
                                           for b in prepared])),
        "parameters": sum(p.numel() for p in encoder.parameters()),
        "prepare_pages_per_s": args.pages / best_time(lambda: [encoder.prepare_pages(b) for b in batches],
                                                      args.repeats),
        "forward_pages_per_s": args.pages / best_time(forward, args.repeats),
        "train_step_pages_per_s": args.pages / best_time(train_step, args.repeats),
    }
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=sorted(BUILDERS), choices=sorted(BUILDERS),
                   help="tiny architectures to build and time (ignored with --model)")
    p.add_argument("--model", type=Path, default=None, help="time this checkpoint instead of the tiny ones")
    p.add_argument("--head", choices=("dense", "multi"), default="dense", help="head of the encoder")
    p.add_argument("--pages", type=int, default=32, help="pages per timed run")
    p.add_argument("--batch_size", type=int, default=8, help="pages per forward")
    p.add_argument("--size", type=int, default=112, help="typical page height in pixels")
    p.add_argument("--repeats", type=int, default=3, help="timed runs (best is reported)")
    add_dtype_argument(p, "float32", "model dtype")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--trust_remote_code", action="store_true", help="allow checkpoint code (MiniCPM-V)")
    p.add_argument("--compile", choices=COMPILE_CHOICES, default="none",
                   help="torch.compile heads / all (compilation happens in the first, untimed-best run)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    report = {"command": "python -m bench.encoder " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "device": args.device, "threads": torch.get_num_threads(), "results": {}}
    if args.model is not None:
        report["results"][str(args.model)] = bench_arch(args.model, None, args)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for arch in args.archs:
                report["results"][arch] = bench_arch(build_tiny(arch, Path(tmp) / arch), arch, args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
