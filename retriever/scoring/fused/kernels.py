"""The Triton kernels of the fused MaxSim (see :mod:`retriever.scoring.fused` for the algorithm).

One ``@triton.jit`` function per pass: ``_forward_kernel`` (scores, optionally with the argmax page token of every
query row; ``_fold_block`` folds one block of page tokens into the running maximum), ``_split_kernel`` (fp16
halves of fp32 inputs), ``_grad_q_kernel`` (query gradient, a gather), ``_bucket_kernel`` (counting sort of each
page's rows by argmax block) and ``_grad_d_kernel`` (page gradient, a one-hot product per token block). They are
launched from :mod:`retriever.scoring.fused.launch` only; ``bench/compile_check.py`` compiles each one for a GPU.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _fold_block(q, q_lo, d_ptr, d_lo_ptr, p0, start, end, best, arg, DIM: tl.constexpr, BLOCK_P: tl.constexpr,
                BLOCK_D: tl.constexpr, MASKED: tl.constexpr, WITH_ARGMAX: tl.constexpr, SPLIT: tl.constexpr,
                PRECISION: tl.constexpr, ACC: tl.constexpr, LO_SCALE: tl.constexpr):
    """Fold page tokens ``p0 .. p0 + BLOCK_P`` into the running max (and argmax) of every query-tile row.

    ``SPLIT``: inputs are fp16 halves of fp32 values, ``x = hi + lo / LO_SCALE``; three products, small ones first.
    """
    toks = p0 + tl.arange(0, BLOCK_P)
    dims = tl.arange(0, BLOCK_D)
    valid = toks < end
    at = toks[:, None] * DIM + dims[None, :]
    inside = valid[:, None] & (dims[None, :] < DIM)
    d = tl.load(d_ptr + at, mask=inside, other=0.0)
    if SPLIT:
        d_lo = tl.load(d_lo_ptr + at, mask=inside, other=0.0)
        sim = tl.dot(q_lo, tl.trans(d), input_precision=PRECISION, out_dtype=ACC)
        sim = tl.dot(q, tl.trans(d_lo), sim, input_precision=PRECISION, out_dtype=ACC)
        sim = tl.dot(q, tl.trans(d), sim * (1.0 / LO_SCALE), input_precision=PRECISION, out_dtype=ACC)
    else:
        sim = tl.dot(q, tl.trans(d), input_precision=PRECISION, out_dtype=ACC)
    if MASKED:  # only the page's last, partial block pays for the -inf fill
        sim = tl.where(valid[None, :], sim, float("-inf"))
    if WITH_ARGMAX:
        blk_best, blk_arg = tl.max(sim, axis=1, return_indices=True)
        arg = tl.where(blk_best > best, blk_arg + (p0 - start).to(tl.int32), arg)  # strict: the first max wins
        best = tl.maximum(best, blk_best)
    else:
        best = tl.maximum(best, tl.max(sim, axis=1))
    return best, arg


@triton.jit
def _forward_kernel(q_ptr, q_lo_ptr, seg_ptr, tile_part_ptr, d_ptr, d_lo_ptr, d_off_ptr, order_ptr, out_ptr, idx_ptr,
                    n_tiles, n_rows, n_pages, stride_out, DIM: tl.constexpr, BLOCK_Q: tl.constexpr,
                    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, NSEG: tl.constexpr, PAGES: tl.constexpr,
                    WITH_ARGMAX: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
                    LO_SCALE: tl.constexpr):
    """Scores of one query tile against ``PAGES`` consecutive pages (of the length order), loading the tile once;
    optionally the argmax page token of every row.

    ``SPLIT``: ``q``/``d`` hold the high fp16 halves of (scaled) fp32 inputs and ``q_lo``/``d_lo`` the low ones.
    """
    pid = tl.program_id(0)
    tile = pid % n_tiles
    rows = tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
    dims = tl.arange(0, BLOCK_D)
    at = rows[:, None].to(tl.int64) * DIM + dims[None, :]
    q = tl.load(q_ptr + at, mask=dims[None, :] < DIM, other=0.0)
    q_lo = tl.load(q_lo_ptr + at, mask=dims[None, :] < DIM, other=0.0) if SPLIT else q
    seg = tl.load(seg_ptr + rows)
    slots = tl.arange(0, NSEG)
    part = tl.load(tile_part_ptr + tile * NSEG + slots)
    for k in tl.static_range(PAGES):  # unrolled: one page gives the same code as no loop
        position = (pid // n_tiles) * PAGES + k
        page = tl.load(order_ptr + tl.minimum(position, n_pages - 1)).to(tl.int64)
        start = tl.load(d_off_ptr + page)
        end = tl.where(position < n_pages, tl.load(d_off_ptr + page + 1), start)  # past the last page: nothing
        best = tl.full([BLOCK_Q], float("-inf"), ACC)
        arg = tl.zeros([BLOCK_Q], tl.int32)
        full_end = start + (end - start) // BLOCK_P * BLOCK_P
        for p0 in range(start, full_end, BLOCK_P):
            best, arg = _fold_block(q, q_lo, d_ptr, d_lo_ptr, p0, start, end, best, arg, DIM, BLOCK_P, BLOCK_D,
                                    False, WITH_ARGMAX, SPLIT, PRECISION, ACC, LO_SCALE)
        if full_end < end:
            best, arg = _fold_block(q, q_lo, d_ptr, d_lo_ptr, full_end, start, end, best, arg, DIM, BLOCK_P,
                                    BLOCK_D, True, WITH_ARGMAX, SPLIT, PRECISION, ACC, LO_SCALE)
        per_part = tl.sum(tl.where(seg[None, :] == slots[:, None], best[None, :], 0.0), axis=1)
        live = tl.full([NSEG], position, tl.int32) < n_pages  # a tensor: the interpreter's masks cannot be scalars
        tl.store(out_ptr + part.to(tl.int64) * stride_out + page, per_part.to(ACC), mask=(part >= 0) & live)
        if WITH_ARGMAX:
            tl.store(idx_ptr + page * n_rows + rows, arg, mask=tl.full([BLOCK_Q], position, tl.int32) < n_pages)


@triton.jit
def _split_kernel(x_ptr, hi_ptr, lo_ptr, n, scale, LO_SCALE: tl.constexpr, BLOCK: tl.constexpr):
    """``hi = fp16(x * scale)``, ``lo = fp16((x * scale - hi) * LO_SCALE)`` (round to nearest even; see
    :func:`_split_fp16`)."""
    at = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    scaled = tl.load(x_ptr + at, mask=at < n, other=0.0) * scale
    hi = scaled.to(tl.float16)
    tl.store(hi_ptr + at, hi, mask=at < n)
    tl.store(lo_ptr + at, ((scaled - hi.to(tl.float32)) * LO_SCALE).to(tl.float16), mask=at < n)


@triton.jit
def _grad_q_kernel(d_ptr, d_off_ptr, idx_ptr, gt_ptr, row_query_ptr, out_ptr, n_rows, n_pages, n_queries,
                   DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """``grad_rows[r] = sum_j g[query(r), j] * d[j, argmax(j, r)]`` for one query tile (a gather over pages).

    ``gt`` is the score gradient transposed, ``[Nd, Nq]``: a tile's rows read neighbouring entries of one row.
    """
    rows = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    dims = tl.arange(0, BLOCK_D)
    idx_at = idx_ptr + rows  # advanced one page (n_rows entries) per step: 64-bit pointer arithmetic
    gt_at = gt_ptr + tl.load(row_query_ptr + rows)
    acc = tl.zeros([BLOCK_Q, BLOCK_D], ACC)
    for page in range(0, n_pages):
        start = tl.load(d_off_ptr + page)
        arg = tl.load(idx_at)
        g = tl.load(gt_at).to(ACC)
        idx_at += n_rows
        gt_at += n_queries
        d = tl.load(d_ptr + (start + arg)[:, None] * DIM + dims[None, :], mask=dims[None, :] < DIM, other=0.0)
        acc += g[:, None] * d.to(ACC)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * DIM + dims[None, :], acc, mask=dims[None, :] < DIM)


@triton.jit
def _bucket_kernel(idx_ptr, sorted_ptr, bucket_ptr, n_rows, BLOCK_P: tl.constexpr, NB: tl.constexpr,
                   CHUNK: tl.constexpr):
    """Stable counting sort of one page's rows by argmax block (``argmax // BLOCK_P``).

    Writes ``sorted[e] = row * BLOCK_P + argmax % BLOCK_P`` grouped by block, rows ascending within a block,
    and ``bucket[b] = (first entry, count)`` of every block ``b``.
    """
    page = tl.program_id(0).to(tl.int64)
    idx_at = idx_ptr + page * n_rows
    bins = tl.arange(0, NB)
    counts = tl.zeros([NB], tl.int32)
    for r0 in range(0, n_rows, CHUNK):  # pass 1: how many rows fall in each block
        rows = r0 + tl.arange(0, CHUNK)
        block = tl.load(idx_at + rows, mask=rows < n_rows, other=0) // BLOCK_P
        hit = (block[:, None] == bins[None, :]) & (rows < n_rows)[:, None]
        counts += tl.sum(hit.to(tl.int32), axis=0)
    first = tl.cumsum(counts, axis=0) - counts
    tl.store(bucket_ptr + page * 2 * NB + bins * 2, first)
    tl.store(bucket_ptr + page * 2 * NB + bins * 2 + 1, counts)
    for r0 in range(0, n_rows, CHUNK):  # pass 2: each row's place, in row order within its block
        rows = r0 + tl.arange(0, CHUNK)
        arg = tl.load(idx_at + rows, mask=rows < n_rows, other=0)
        hit = ((arg // BLOCK_P)[:, None] == bins[None, :]) & (rows < n_rows)[:, None]
        ones = hit.to(tl.int32)
        place = tl.sum(tl.where(hit, tl.cumsum(ones, axis=0) - 1 + first[None, :], 0), axis=1)
        value = rows.to(tl.int64) * BLOCK_P + arg % BLOCK_P
        tl.store(sorted_ptr + page * n_rows + place, value, mask=rows < n_rows)
        first += tl.sum(ones, axis=0)


@triton.jit
def _grad_d_kernel(q_ptr, d_off_ptr, sorted_ptr, bucket_ptr, gt_ptr, row_query_ptr, out_ptr, n_rows, n_queries,
                   page0, DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
                   NB: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr):
    """``grad_d[s] = sum_{r: argmax(j, r) = s} g[query(r), j] * q[r]`` for one block of page ``j``'s tokens.

    Only the rows whose argmax lies in the block are visited (``_bucket_kernel``'s list), ``BLOCK_Q`` at a time,
    as a one-hot product ``W [BLOCK_P, BLOCK_Q] @ q[rows] [BLOCK_Q, D]``.
    """
    local = tl.program_id(0).to(tl.int64)  # page within this launch's chunk of pages
    page = page0 + local
    block = tl.program_id(1)
    start = tl.load(d_off_ptr + page)
    end = tl.load(d_off_ptr + page + 1)
    toks = block * BLOCK_P + tl.arange(0, BLOCK_P)  # page-local token indices
    dims = tl.arange(0, BLOCK_D)
    first = tl.load(bucket_ptr + local * 2 * NB + block * 2)
    stop = first + tl.load(bucket_ptr + local * 2 * NB + block * 2 + 1)
    acc = tl.zeros([BLOCK_P, BLOCK_D], ACC)
    for e0 in range(first, stop, BLOCK_Q):
        entries = e0 + tl.arange(0, BLOCK_Q)
        valid = entries < stop
        value = tl.load(sorted_ptr + local * n_rows + entries, mask=valid, other=0).to(tl.int64)
        rows = value // BLOCK_P
        g = tl.load(gt_ptr + page * n_queries + tl.load(row_query_ptr + rows), mask=valid, other=0.0)
        q = tl.load(q_ptr + rows[:, None] * DIM + dims[None, :], mask=valid[:, None] & (dims[None, :] < DIM),
                    other=0.0)
        hit = (tl.arange(0, BLOCK_P)[:, None] == (value % BLOCK_P)[None, :]) & valid[None, :]
        weights = tl.where(hit, g[None, :], 0.0).to(q.dtype)  # g at each row's argmax
        acc = tl.dot(weights, q, acc, input_precision=PRECISION, out_dtype=ACC)
    out = out_ptr + (start + toks)[:, None] * DIM + dims[None, :]
    tl.store(out, acc, mask=(start + toks < end)[:, None] & (dims[None, :] < DIM))
