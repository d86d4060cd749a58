"""Kernel launches of the fused MaxSim: forward (scores, optionally argmax), fp16 splitting, and both gradients.

Each function sizes the grid and the constexprs of one pass of :mod:`retriever.scoring.fused.kernels` from a
:class:`~retriever.scoring.fused.config.BlockConfig` and the packed inputs of
:mod:`retriever.scoring.fused.packing`, allocates its output and launches. Accumulation is float32 (float64 for
float64 inputs). fp32 evaluation inputs may be scored as three fp16 products over their halves (:func:`_split_fp16`);
the page-gradient pass runs in chunks of pages whose sorted row lists stay within ``SORTED_ENTRIES``, so its extra
memory is bounded whatever the batch.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from retriever.scoring.fused.config import BlockConfig
from retriever.scoring.fused.kernels import (_bucket_kernel, _forward_kernel, _grad_d_kernel, _grad_q_kernel,
                                             _split_kernel)
from retriever.scoring.fused.packing import PackedPages, QueryTiles

__all__ = ["acc_dtypes", "launch_forward", "launch_grad_rows", "launch_grad_tokens"]

LO_SCALE = 2048.0  # 2**11: the low fp16 half is stored scaled up, clear of fp16's subnormal range
SPLIT_BLOCK = 4096  # elements per program of the split kernel
SORTED_ENTRIES = 1 << 27  # row-list entries per chunk of pages in the page-gradient pass (512 MiB as int32)
SORT_STEP = 1 << 13  # rows x blocks compared per step of the counting sort (its registers)
INT32_ENTRIES = 1 << 31  # row-list entries (row * block_p_grad + token) below this are stored as int32


def acc_dtypes(dtype: torch.dtype) -> tuple[torch.dtype, tl.dtype]:
    """The accumulation dtype (torch, Triton) for inputs of ``dtype``: float64 for float64, else float32."""
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def launch_forward(tiles: QueryTiles, pages: PackedPages, with_argmax: bool,
                   cfg: BlockConfig) -> tuple[Tensor, Tensor | None]:
    """Per-part scores ``[P, Nd]`` and, with ``with_argmax``, page-local argmax indices ``int32 [Nd, R]``."""
    dim = tiles.rows.shape[1]
    torch_acc, tl_acc = acc_dtypes(tiles.rows.dtype)
    device = tiles.rows.device
    out = torch.zeros(tiles.part_query.numel(), len(pages), dtype=torch_acc, device=device)
    n_rows = tiles.rows.shape[0]
    idx = torch.empty(len(pages), n_rows, dtype=torch.int32, device=device) if with_argmax else out
    if out.numel() == 0:
        return out, (idx if with_argmax else None)
    order = torch.argsort(pages.lengths(), descending=True, stable=True).to(torch.int32)
    split = cfg.split_fp32 and tiles.rows.dtype == torch.float32
    (q, q_lo, q_scale), (d, d_lo, d_scale) = (_split_fp16(x) if split else (x, x, 1.0)
                                              for x in (tiles.rows, pages.tokens))
    grid = (tiles.n_tiles * triton.cdiv(len(pages), cfg.pages_per_program),)
    _forward_kernel[grid](q, q_lo, tiles.seg, tiles.tile_part, d, d_lo, pages.offsets, order, out, idx,
                          tiles.n_tiles, n_rows, len(pages), out.stride(0), DIM=dim, BLOCK_Q=tiles.block_q,
                          BLOCK_P=cfg.block_p, BLOCK_D=max(16, triton.next_power_of_2(dim)), NSEG=tiles.nseg,
                          PAGES=cfg.pages_per_program, WITH_ARGMAX=with_argmax, SPLIT=split,
                          PRECISION=cfg.precision(q.dtype), ACC=tl_acc, LO_SCALE=LO_SCALE, num_warps=cfg.num_warps,
                          num_stages=cfg.num_stages)
    if split:  # undo the power-of-two scaling: exact
        out.mul_(1.0 / (q_scale * d_scale))
    return out, (idx if with_argmax else None)


def _split_fp16(x: Tensor) -> tuple[Tensor, Tensor, float]:
    """fp16 halves ``(hi, lo, scale)`` of fp32 ``x``: ``x * scale = hi + lo / LO_SCALE``.

    ``scale`` is the power of two that brings ``max |x|`` into ``(1/2, 1]`` (fp16's range). ``hi`` holds 11 bits
    and ``lo`` the next 11 (scaled by ``LO_SCALE``), so ``hi*hi + (hi*lo + lo*hi) / LO_SCALE`` (the dropped
    ``lo*lo`` term is about 2**-24 relative) matches an fp32 product, with fp16 products exact on tensor cores
    and fp32 accumulation. Entries below 2**-14 of the maximum lose relative (not absolute) precision to fp16's
    subnormals. One pass finds the maximum and one kernel writes both halves (``x`` is read twice in all).
    """
    hi = torch.empty(x.shape, dtype=torch.float16, device=x.device)
    lo = torch.empty_like(hi)
    if not x.numel():
        return hi, lo, 1.0
    smallest, largest = torch.aminmax(x)
    peak = max(-float(smallest), float(largest))
    scale = 2.0 ** -math.ceil(math.log2(peak)) if peak > 0 else 1.0
    _split_kernel[(triton.cdiv(x.numel(), SPLIT_BLOCK),)](x, hi, lo, x.numel(), scale, LO_SCALE=LO_SCALE,
                                                           BLOCK=SPLIT_BLOCK, num_warps=4)
    return hi, lo, scale


def launch_grad_rows(tiles: QueryTiles, pages: PackedPages, idx: Tensor, gt: Tensor, cfg: BlockConfig) -> Tensor:
    """Gradient of every query-tile row ``[R, D]`` (accumulation dtype)."""
    dim = tiles.rows.shape[1]
    torch_acc, tl_acc = acc_dtypes(tiles.rows.dtype)
    out = torch.empty(tiles.rows.shape, dtype=torch_acc, device=tiles.rows.device)
    _grad_q_kernel[(tiles.n_tiles,)](pages.tokens, pages.offsets, idx, gt, tiles.row_query, out, tiles.rows.shape[0],
                                     len(pages), gt.shape[1], DIM=dim, BLOCK_Q=tiles.block_q,
                                     BLOCK_D=max(16, triton.next_power_of_2(dim)), ACC=tl_acc,
                                     num_warps=cfg.num_warps)
    return out


def launch_grad_tokens(tiles: QueryTiles, pages: PackedPages, idx: Tensor, gt: Tensor, cfg: BlockConfig) -> Tensor:
    """Gradient of every packed page token ``[T, D]`` (accumulation dtype).

    Pages go in chunks whose sorted row lists (one entry per query row and page; int32 unless ``rows x
    block_p_grad`` needs 64 bits) stay within ``SORTED_ENTRIES``, so the backward's extra memory is bounded
    whatever the batch.
    """
    dim = tiles.rows.shape[1]
    torch_acc, tl_acc = acc_dtypes(tiles.rows.dtype)
    device = pages.tokens.device
    out = torch.empty(pages.tokens.shape, dtype=torch_acc, device=device)
    n_rows, block_p = tiles.rows.shape[0], cfg.block_p_grad
    blocks = triton.cdiv(int(pages.lengths().max()), block_p)
    nb = triton.next_power_of_2(blocks)
    chunk = max(1, SORTED_ENTRIES // n_rows)
    entry = torch.int32 if n_rows * block_p < INT32_ENTRIES else torch.int64
    sorted_rows = torch.empty(min(chunk, len(pages)), n_rows, dtype=entry, device=device)
    buckets = torch.empty(min(chunk, len(pages)), nb, 2, dtype=torch.int32, device=device)
    for page0 in range(0, len(pages), chunk):
        n = min(chunk, len(pages) - page0)
        _bucket_kernel[(n,)](idx[page0:page0 + n], sorted_rows, buckets, n_rows, BLOCK_P=block_p, NB=nb,
                             CHUNK=max(16, SORT_STEP // nb), num_warps=cfg.num_warps)
        _grad_d_kernel[(n, blocks)](tiles.rows, pages.offsets, sorted_rows, buckets, gt, tiles.row_query, out,
                                    n_rows, gt.shape[1], page0, DIM=dim, BLOCK_Q=tiles.block_q, BLOCK_P=block_p,
                                    BLOCK_D=max(16, triton.next_power_of_2(dim)), NB=nb,
                                    PRECISION=cfg.precision(tiles.rows.dtype), ACC=tl_acc,
                                    num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out
