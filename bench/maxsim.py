"""MaxSim scoring throughput: ``retriever.scoring`` against colpali-engine's ``score_multi_vector``.

Measures queries x pages x query-tokens x page-tokens dot products per second (and GFLOP/s, 2*D flops each)
on identical random L2-normalised tensors, checks that both produce the same scores, and prints the command
that reproduces the run. Two page layouts: fixed length (ColPali-style 1030 tokens) and dynamic length
(ColQwen2-style, uniform in [min, max] tokens), where ours sorts pages by length and colpali-engine pads each
batch of 128 in input order.

On a GPU (``--device cuda``) ours is the fused Triton kernel (when Triton is installed); the bench also measures
the bf16 matmul rate of one large GEMM and reports MaxSim's achieved rate as a fraction of it. ``--bf16`` scores
ours in bf16 against colpali-engine in float32 (scores must agree to 1e-2; 1e-3 in float32). colpali-engine is
optional (``pip install --no-deps colpali-engine``); without it the comparison is skipped with a message.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import sys
import time
import types
from collections.abc import Callable

import torch

from retriever.scoring import maxsim_lists


def load_colpali_scorer() -> Callable | None:
    """colpali-engine's ``score_multi_vector`` without importing its model zoo (which needs torchvision)."""
    spec = importlib.util.find_spec("colpali_engine")
    if spec is None or not spec.submodule_search_locations:
        return None
    if "colpali_engine" not in sys.modules:  # bare package object: submodules import, __init__ does not run
        package = types.ModuleType("colpali_engine")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["colpali_engine"] = package
    from colpali_engine.utils.processing_utils import BaseVisualRetrieverProcessor

    return BaseVisualRetrieverProcessor.score_multi_vector


def make_inputs(args: argparse.Namespace, dynamic: bool, device: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Random normalised multi-vector queries and pages (fixed seed)."""
    gen = torch.Generator().manual_seed(0)
    q_len = torch.randint(args.q_tokens // 2, args.q_tokens + 1, (args.queries,), generator=gen)
    if dynamic:
        p_len = torch.randint(args.min_page_tokens, args.page_tokens + 1, (args.pages,), generator=gen)
    else:
        p_len = torch.full((args.pages,), args.page_tokens)

    def vecs(n: int) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(n, args.dim, generator=gen), dim=-1).to(device)

    return [vecs(int(n)) for n in q_len], [vecs(int(n)) for n in p_len]


def timed(fns: dict[str, Callable[[], torch.Tensor]], repeats: int, device: str) -> dict[str, tuple[float, torch.Tensor]]:
    """Best wall time of each function over ``repeats`` interleaved rounds, after one warm-up each.

    Interleaving gives every contender the same share of a machine whose load changes over time.
    """
    outputs = {name: fn() for name, fn in fns.items()}
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            outputs[name] = fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: (best[name], outputs[name]) for name in fns}


def bf16_matmul_rate(device: str, n: int = 8192) -> float:
    """Measured dense bf16 GEMM rate in FLOP/s (the GPU reference for MaxSim's efficiency)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    seconds, _ = timed({"gemm": lambda: a @ b}, 5, device)["gemm"]
    return 2 * n**3 / seconds


def run_layout(args: argparse.Namespace, dynamic: bool, colpali: Callable | None) -> dict:
    """Benchmark one page layout; returns the measured figures."""
    queries, pages = make_inputs(args, dynamic, args.device)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    pairs = sum(q.shape[0] for q in queries) * sum(p.shape[0] for p in pages)  # exact dot products needed
    fns = {"ours": lambda: maxsim_lists(queries, pages, compute_dtype=dtype)}
    if colpali is not None:
        fns["colpali"] = lambda: colpali(queries, pages, device=args.device)
    times = timed(fns, args.repeats, args.device)
    ours_s, ours = times["ours"]
    result = {"layout": "dynamic" if dynamic else "fixed", "ours_s": ours_s,
              "ours_gflops": 2 * args.dim * pairs / ours_s / 1e9}
    if "colpali" in times:
        theirs_s, theirs = times["colpali"]
        diff = (ours.cpu() - theirs.cpu()).abs().max().item()
        if diff > (1e-2 if args.bf16 else 1e-3):
            raise SystemExit(f"scores differ from colpali-engine by {diff} ({result['layout']} layout)")
        result.update(colpali_s=theirs_s, speedup=theirs_s / ours_s, max_abs_diff=diff)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=128, help="number of queries")
    p.add_argument("--pages", type=int, default=256, help="number of pages")
    p.add_argument("--q-tokens", type=int, default=24, help="max query tokens (lengths uniform in [half, max])")
    p.add_argument("--page-tokens", type=int, default=1030, help="page tokens (fixed) / max page tokens (dynamic)")
    p.add_argument("--min-page-tokens", type=int, default=256, help="min page tokens of the dynamic layout")
    p.add_argument("--dim", type=int, default=128, help="embedding dimension")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds (best of each is reported)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--bf16", action="store_true", help="score ours in bf16 (GPU; colpali-engine stays float32)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    colpali = load_colpali_scorer()
    if colpali is None:
        print("colpali-engine is not installed: comparison skipped (pip install --no-deps colpali-engine)")
    report = {"command": "python -m bench.maxsim " + shlex.join(sys.argv[1:] if argv is None else argv),
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "threads": torch.get_num_threads(), "load_average_1min": os.getloadavg()[0], "shape": vars(args),
              "results": [run_layout(args, dynamic, colpali) for dynamic in (False, True)]}
    if args.device.startswith("cuda"):
        peak = bf16_matmul_rate(args.device)
        report["bf16_matmul_tflops"] = peak / 1e12
        for r in report["results"]:
            r["fraction_of_bf16_matmul"] = r["ours_gflops"] * 1e9 / peak
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
