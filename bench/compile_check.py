"""Compile the fused MaxSim kernels for an NVIDIA GPU on a machine without one, and report their resources.

Triton's interpreter (the CPU tests) runs the kernels' arithmetic but not the compiler: a kernel it accepts may
still fail to lower, or spill registers, on a GPU. This compiles every kernel of ``retriever.scoring.fused.kernels``
with the tile configurations ``block_config_for`` picks for the target (``--arch 90``: H100/H200, 227 KiB of
shared memory per block) through Triton's NVIDIA backend and its bundled ``ptxas`` (no driver, no GPU), then
reads the cubin with the bundled ``cuobjdump``: registers per thread, local memory (spills), shared memory, and
how many tensor-core instructions the kernel holds (``HGMMA``: Hopper's warp-group MMA; ``HMMA``: the older MMA;
``DMMA``: float64). Compiling takes 10-20 s on 2 cores.

Usage: ``python -m bench.compile_check [--arch 90] [--shared-memory 232448] [--json FILE]``. Exit status 1 if
any kernel fails to compile. ``TRITON_INTERPRET`` must be unset (the interpreter replaces the kernels).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from retriever.scoring.fused import kernels
from retriever.scoring.fused.config import BlockConfig, block_config_for
from retriever.scoring.fused.launch import LO_SCALE, SORT_STEP, SPLIT_BLOCK
from retriever.scoring.fused.packing import MAX_PARTS_PER_TILE

TL_DTYPE = {torch.bfloat16: ("bf16", tl.float32), torch.float16: ("fp16", tl.float32),
            torch.float32: ("fp32", tl.float32), torch.float64: ("fp64", tl.float64)}
DIM, NB = 128, 16  # ColPali's embedding size; 16 page-token blocks (pages up to 1024 tokens in 64-token blocks)


def kernel_jobs(shared_memory: int) -> list[tuple[str, object, dict[str, str], dict[str, object], BlockConfig]]:
    """``(name, kernel, argument types, constexprs, config)`` of every kernel launch the library makes."""
    jobs = []
    for dtype, loss in ((torch.bfloat16, False), (torch.float32, False), (torch.bfloat16, True),
                        (torch.float32, True), (torch.float64, True)):
        cfg = block_config_for(shared_memory, dtype, loss)
        split = cfg.split_fp32 and dtype == torch.float32
        operand = torch.float16 if split else dtype
        ty, acc = TL_DTYPE[operand][0], TL_DTYPE[dtype][1]
        acc_ty = "fp64" if dtype == torch.float64 else "fp32"
        precision = cfg.precision(operand)
        tag = f"{str(dtype).removeprefix('torch.')} {'loss' if loss else 'eval'} {cfg.block_q}x{cfg.block_p}"
        jobs.append((f"forward, {tag}{' split' if split else ''}", kernels._forward_kernel,
                     {"q_ptr": f"*{ty}", "q_lo_ptr": f"*{ty}", "seg_ptr": "*i32", "tile_part_ptr": "*i32",
                      "d_ptr": f"*{ty}", "d_lo_ptr": f"*{ty}", "d_off_ptr": "*i64", "order_ptr": "*i32",
                      "out_ptr": f"*{acc_ty}", "idx_ptr": "*i32", "n_tiles": "i32", "n_rows": "i32", "n_pages": "i32",
                      "stride_out": "i32"},
                     {"DIM": DIM, "BLOCK_Q": cfg.block_q, "BLOCK_P": cfg.block_p, "BLOCK_D": DIM,
                      "NSEG": MAX_PARTS_PER_TILE, "PAGES": cfg.pages_per_program, "WITH_ARGMAX": loss,
                      "SPLIT": split, "PRECISION": precision, "ACC": acc, "LO_SCALE": LO_SCALE}, cfg))
        if split:
            jobs.append((f"fp16 halves, {tag}", kernels._split_kernel,
                         {"x_ptr": "*fp32", "hi_ptr": "*fp16", "lo_ptr": "*fp16", "n": "i64", "scale": "fp32"},
                         {"LO_SCALE": LO_SCALE, "BLOCK": SPLIT_BLOCK}, replace(cfg, num_warps=4)))
        if not loss:
            continue
        jobs.append((f"query gradient, {tag}", kernels._grad_q_kernel,
                     {"d_ptr": f"*{ty}", "d_off_ptr": "*i64", "idx_ptr": "*i32", "gt_ptr": f"*{acc_ty}",
                      "row_query_ptr": "*i32", "out_ptr": f"*{acc_ty}", "n_rows": "i32", "n_pages": "i32",
                      "n_queries": "i32"},
                     {"DIM": DIM, "BLOCK_Q": cfg.block_q, "BLOCK_D": DIM, "ACC": acc}, cfg))
        jobs.append((f"page-gradient sort, {tag}", kernels._bucket_kernel,
                     {"idx_ptr": "*i32", "sorted_ptr": "*i32", "bucket_ptr": "*i32", "n_rows": "i32"},
                     {"BLOCK_P": cfg.block_p_grad, "NB": NB, "CHUNK": max(16, SORT_STEP // NB)}, cfg))
        jobs.append((f"page gradient, {tag}", kernels._grad_d_kernel,
                     {"q_ptr": f"*{ty}", "d_off_ptr": "*i64", "sorted_ptr": "*i32", "bucket_ptr": "*i32",
                      "gt_ptr": f"*{acc_ty}", "row_query_ptr": "*i32", "out_ptr": f"*{acc_ty}", "n_rows": "i32",
                      "n_queries": "i32", "page0": "i32"},
                     {"DIM": DIM, "BLOCK_Q": cfg.block_q, "BLOCK_P": cfg.block_p_grad, "BLOCK_D": DIM, "NB": NB,
                      "PRECISION": precision, "ACC": acc}, cfg))
    return jobs


def tool(name: str) -> str:
    """Path of a binary bundled with Triton's NVIDIA backend (``ptxas``, ``cuobjdump``)."""
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def compile_one(kernel, types: dict[str, str], constexprs: dict[str, object], cfg: BlockConfig,
                target: GPUTarget) -> dict:
    """Compile one kernel for ``target``; its shared memory, registers, spills and tensor-core instructions."""
    missing = [a for a in kernel.arg_names if a not in types and a not in constexprs]
    if missing:
        raise ValueError(f"no type given for {missing} of {kernel.fn.__name__}")
    signature = {a: "constexpr" if a in constexprs else types[a] for a in kernel.arg_names}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs), target=target,
                              options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([tool("cuobjdump"), "--dump-resource-usage", str(cubin)], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([tool("cuobjdump"), "--dump-sass", str(cubin)], capture_output=True, text=True,
                              check=True).stdout
    resources = dict(re.findall(r"\b(REG|LOCAL):(\d+)", usage))
    return {"shared_bytes": compiled.metadata.shared, "registers": int(resources.get("REG", -1)),
            "local_bytes": int(resources.get("LOCAL", -1)),
            "tensor_core_instructions": {op: sass.count(op) for op in ("HGMMA", "HMMA", "DMMA") if op in sass},
            "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200, 80: A100)")
    p.add_argument("--shared-memory", type=int, default=232448,
                   help="opt-in shared memory per block in bytes, which picks the tile sizes (H100/H200: 232448)")
    p.add_argument("--json", default=None, help="write the report here as well as to stdout")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("error: unset TRITON_INTERPRET: the interpreter replaces the kernels to compile")
    target = GPUTarget("cuda", args.arch, 32)
    report = {"command": "python -m bench.compile_check " + shlex.join(sys.argv[1:] if argv is None else argv),
              "triton": triton.__version__, "arch": args.arch, "kernels": []}
    for name, kernel, types, constexprs, cfg in kernel_jobs(args.shared_memory):
        try:
            row = {"kernel": name, **compile_one(kernel, types, constexprs, cfg, target)}
        except Exception as error:  # report every kernel, then fail
            row = {"kernel": name, "error": f"{type(error).__name__}: {error}"[:2000]}
        report["kernels"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 1 if any("error" in row for row in report["kernels"]) else 0


if __name__ == "__main__":
    sys.exit(main())
