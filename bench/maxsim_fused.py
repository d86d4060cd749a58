"""Fused MaxSim on a GPU: tile-size sweep of the scoring kernel, and the differentiable loss at large batches.

1. Sweep: the evaluation kernel (``retriever.scoring.fused.evaluation.maxsim_packed``) on ``bench.maxsim``'s input
   shape (fixed-length and dynamic pages, packed once) with each ``--configs`` entry (``BLOCK_Q x BLOCK_P x
   warps x stages``, optionally ``@pages per program``) in bf16, and each ``--fp32-configs`` entry in float32
   (``:split`` = three fp16 products over the inputs' halves, ``:tf32x3`` / ``:ieee`` = that ``tl.dot``
   precision). Reports TFLOP/s (2*D flops per real token pair) and the largest difference from the default
   configuration of the same dtype (fp32: also from float64 scores computed by the same kernel).
2. Loss: forward + backward of ``fused_maxsim`` over ``B`` query/page pairs with in-batch negatives (a ``B x B``
   score matrix, each score a MaxSim over ``--q-tokens x --page-tokens``), bf16 leaves, as in training. Reports
   the time of each pass, the forward-equivalent rate (``2*D*B^2*Lq*Ld`` flops over forward+backward time: the
   backward's page gradient is a second product of the same size, so the hardware does about twice that), and
   the peak memory above the inputs. ``--baseline-batch`` also times the chunked autograd function
   (``retriever.scoring.chunked_maxsim``, float32) and the fused path at that smaller batch.

All rates are also given as a fraction of the measured bf16 GEMM rate. Writes one JSON report (``--json``).
``--device cpu`` runs the same code in Triton's interpreter (``TRITON_INTERPRET=1``, tiny shapes only).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import torch

from bench.maxsim import bf16_matmul_rate, make_inputs
from retriever.scoring import chunked_maxsim
from retriever.scoring.fused.autograd import fused_maxsim
from retriever.scoring.fused.config import BlockConfig, block_config
from retriever.scoring.fused.evaluation import maxsim_packed
from retriever.scoring.fused.packing import PackedPages


def now(device: torch.device) -> float:
    """Wall clock after the device's queued work has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def best_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Best wall time of ``fn`` over ``repeats`` runs after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = now(device)
        fn()
        best = min(best, now(device) - start)
    return best


def parse_config(text: str) -> BlockConfig:
    """``"128x64x8x3"`` -> BlockConfig(block_q=128, block_p=64, num_warps=8, num_stages=3); an optional fifth
    number is the page-gradient kernel's block (``block_p_grad``), an optional ``@N`` the pages per forward
    program, an optional ``:split`` / ``:tf32x3`` / ``:ieee`` suffix how fp32 inputs are multiplied
    (``"128x64x8x3@2:split"``)."""
    sizes, _, mode = text.partition(":")
    sizes, _, pages = sizes.partition("@")
    cfg = replace(BlockConfig(*(int(x) for x in sizes.split("x"))), pages_per_program=int(pages or 1))
    if mode == "split":
        return replace(cfg, split_fp32=True)
    return replace(cfg, fp32_precision=mode) if mode else cfg


def sweep(args: argparse.Namespace, configs: str, dtype: torch.dtype, peak: float,
          device: torch.device) -> list[dict]:
    """Evaluation-kernel time of every configuration on the ``bench.maxsim`` shape, both page layouts."""
    return [row for dynamic in (False, True) for row in sweep_layout(args, configs, dtype, peak, device, dynamic)]


def sweep_layout(args: argparse.Namespace, configs: str, dtype: torch.dtype, peak: float, device: torch.device,
                 dynamic: bool) -> list[dict]:
    """Evaluation-kernel time of every configuration on fixed-length or dynamic (``bench.maxsim``'s) pages."""
    shape = argparse.Namespace(queries=args.queries, pages=args.pages, q_tokens=args.q_tokens,
                               page_tokens=args.page_tokens, min_page_tokens=args.min_page_tokens, dim=args.dim)
    queries, pages = make_inputs(shape, dynamic, str(device))
    layout = "dynamic" if dynamic else "fixed"
    packed = PackedPages.pack(pages, dtype)
    flops = 2 * args.dim * sum(len(q) for q in queries) * sum(len(p) for p in pages)
    reference = maxsim_packed(queries, packed, dtype, device)
    exact = None
    if dtype == torch.float32:
        try:  # float64 through the same kernel (fp64 tensor cores or FMA): the precision reference
            exact = maxsim_packed([q.double() for q in queries], PackedPages.pack(pages, torch.float64),
                                  torch.float64, device).double()
        except Exception as error:
            print(f"float64 reference failed: {error!r}"[:300], file=sys.stderr)
    results = []
    for text in configs.split(","):
        cfg = parse_config(text)
        try:
            got = maxsim_packed(queries, packed, dtype, device, cfg=cfg)
            seconds = best_time(lambda: maxsim_packed(queries, packed, dtype, device, cfg=cfg), args.repeats, device)
        except Exception as error:  # a configuration the device cannot compile (e.g. out of shared memory)
            results.append({"config": text, "layout": layout, "dtype": str(dtype), "error": repr(error)[:300]})
            continue
        row = {"config": text, "layout": layout, "dtype": str(dtype), "seconds": seconds,
               "tflops": flops / seconds / 1e12, "fraction_of_bf16_matmul": flops / seconds / peak,
               "max_abs_diff_vs_default": (got - reference).abs().max().item()}
        if exact is not None:
            row["max_abs_diff_vs_float64"] = (got.double() - exact).abs().max().item()
        results.append(row)
    return results


def loss_inputs(batch: int, args: argparse.Namespace, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Random normalised ``[B, Lq, D]`` queries and ``[B, Ld, D]`` pages (all tokens valid), as leaves."""
    gen = torch.Generator(device=args.device).manual_seed(0)

    def normal(*shape: int) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(*shape, device=args.device, generator=gen), dim=-1)

    q, d = normal(batch, args.q_tokens, args.dim), normal(batch, args.page_tokens, args.dim)
    qm = torch.ones(batch, args.q_tokens, dtype=torch.bool, device=args.device)
    dm = torch.ones(batch, args.page_tokens, dtype=torch.bool, device=args.device)
    return q.to(dtype).requires_grad_(True), qm, d.to(dtype).requires_grad_(True), dm


def time_loss(path: str, score_fn: Callable, batch: int, args: argparse.Namespace, dtype: torch.dtype,
              peak: float, grads: str = "qd") -> dict:
    """Forward and backward time of ``score_fn(q, qm, d, dm)`` with a random upstream gradient.

    ``grads``: which inputs require a gradient (``"q"`` or ``"d"`` alone time one backward kernel each).
    """
    q, qm, d, dm = loss_inputs(batch, args, dtype)
    q.requires_grad_("q" in grads)
    d.requires_grad_("d" in grads)
    grad = torch.randn(batch, batch, device=args.device)
    times = {"forward": float("inf"), "backward": float("inf")}
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else 0
    for _ in range(args.repeats + 1):  # the first round compiles and warms up; best of the others
        q.grad = d.grad = None
        t0 = now(q.device)
        scores = score_fn(q, qm, d, dm)
        t1 = now(q.device)
        scores.backward(grad.to(scores.dtype))
        t2 = now(q.device)
        times = {"forward": min(times["forward"], t1 - t0), "backward": min(times["backward"], t2 - t1)}
    flops = 2 * args.dim * batch * args.q_tokens * batch * args.page_tokens
    total = times["forward"] + times["backward"]
    return {"path": path, "grads": grads, "batch": batch, "dtype": str(dtype), "forward_s": times["forward"],
            "backward_s": times["backward"], "total_s": total, "forward_tflops": flops / times["forward"] / 1e12,
            "forward_equivalent_tflops": flops / total / 1e12, "fraction_of_bf16_matmul": flops / total / peak,
            "peak_mib_above_inputs": (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=256)
    p.add_argument("--pages", type=int, default=4096)
    p.add_argument("--q-tokens", type=int, default=32)
    p.add_argument("--page-tokens", type=int, default=768)
    p.add_argument("--min-page-tokens", type=int, default=256, help="shortest page of the dynamic layout")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--configs", default="256x64x8x3,256x64x8x3@2,256x64x8x3@4,256x64x4x3,256x128x8x3,256x64x8x4",
                   help="bf16 sweep: comma-separated BLOCK_QxBLOCK_PxWARPSxSTAGES[@PAGES] ('' skips)")
    p.add_argument("--fp32-configs",
                   default="128x64x8x3:split,128x64x8x3@4:split,64x64x4x3:split,128x64x8x4:split,64x64x4x3:tf32x3",
                   help="float32 sweep: as --configs, with :split, :tf32x3 or :ieee ('' skips)")
    p.add_argument("--loss-batch", type=int, default=4096, help="pairs of the loss benchmark (0 skips)")
    p.add_argument("--loss-configs", default="", help="extra tile configurations for the loss at --loss-batch")
    p.add_argument("--baseline-batch", type=int, default=512, help="batch of the chunked-vs-fused comparison (0 skips)")
    p.add_argument("--device", default="cuda", help="cuda, or cpu for Triton's interpreter")
    p.add_argument("--json", default=None, help="write the report here as well as to stdout")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    peak = bf16_matmul_rate(args.device, 8192 if device.type == "cuda" else 256)
    report = {"command": "python -m bench.maxsim_fused " + shlex.join(sys.argv[1:] if argv is None else argv),
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (Triton interpreter)",
              "bf16_matmul_tflops": peak / 1e12, "default_config_bf16": vars(block_config(device, torch.bfloat16)),
              "sweep": sweep(args, args.configs, torch.bfloat16, peak, device) if args.configs else [],
              "sweep_fp32": sweep(args, args.fp32_configs, torch.float32, peak, device) if args.fp32_configs else []}
    if args.loss_batch:
        report["loss"] = time_loss("fused_maxsim", fused_maxsim, args.loss_batch, args, torch.bfloat16, peak)
        report["loss_backward_parts"] = [time_loss("fused_maxsim", fused_maxsim, args.loss_batch, args,
                                                   torch.bfloat16, peak, grads) for grads in ("q", "d")]
        report["loss_configs"] = [time_loss(f"fused_maxsim {text}", partial(fused_maxsim, cfg=parse_config(text)),
                                            args.loss_batch, args, torch.bfloat16, peak)
                                  for text in args.loss_configs.split(",") if text]
    if args.baseline_batch:
        report["loss_baseline"] = [time_loss("fused_maxsim", fused_maxsim, args.baseline_batch, args, dtype, peak)
                                   for dtype in (torch.bfloat16, torch.float32)]
        report["loss_baseline"].append(time_loss("chunked_maxsim (chunk 64)", chunked_maxsim, args.baseline_batch,
                                                 args, torch.float32, peak))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
