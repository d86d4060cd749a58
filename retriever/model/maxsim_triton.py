"""Fused MaxSim kernels (Triton): evaluation scores, and the loss's forward (with argmax) and exact backward.

Algorithm
---------
* **Layout.** Pages are packed into one token matrix ``[T, D]`` plus offsets (no padding; a padded batch is packed
  through its mask). Queries are packed into *tiles* of ``BLOCK_Q`` token rows that hold whole queries: queries
  are taken longest first and a tile is closed when the next one does not fit or it holds 32 queries (a query
  longer than a tile is split into parts, whose scores are added afterwards). Rows left over at a tile's end are
  zero and belong to no query, so short and long queries share tiles instead of all being padded to the longest.
* **Forward.** One program scores one query tile against one page: it loads the tile once, streams the page's
  tokens in blocks of ``BLOCK_P``, computes the ``[BLOCK_Q, BLOCK_P]`` dot products with one ``tl.dot`` (fp32
  accumulation; bf16/fp16 products are exact; fp32 inputs are scored as three fp16 products over their high
  and low halves in evaluation, or three TF32 passes in the loss, both fp32-level accurate; fp64 stays fp64),
  folds them into a running maximum per query-token row kept in registers (page tokens past the page's end are
  ``-inf``), and finally sums the rows of each query of the tile (a segmented sum) and writes one score per
  (query, page). A program may score several consecutive pages with its tile (``pages_per_program``), loading
  the tile once. The ``[Nq*Lq, Nd*Ld]`` similarity block is never written: memory is the inputs, the
  ``[Nq, Nd]`` scores and, for the loss, the argmax indices below.
* **Scheduling.** The grid is flat, query tile fastest, so consecutive programs read the same page (from L2);
  pages run longest first (length-sorted order), so ragged pages do not leave a tail of long pages at the end.
* **Loss.** :class:`FusedMaxSim` stores, per (page, query-token row), the index of the winning page token
  (``int32 [Nd, R]``, page-major so both backward kernels read it contiguously; 4 bytes per (query token, page),
  ``Lq`` times the score matrix, instead of recomputing every dot product again in backward). Ties in the max
  go to the first maximal page token (lowest index). The gradient of a max flows only to its argmax, so
  backward is exact without recomputation:
  ``grad_q[i,t] = sum_j g[i,j] * d[j, a(i,t,j)]`` is a gather (one program per query tile, looping over pages),
  and ``grad_d[j,s] = sum_{i,t: a(i,t,j)=s} g[i,j] * q[i,t]`` a scatter-add, computed as a gather too: a
  counting sort per page groups the rows by the block of ``block_p_grad`` page tokens that holds their argmax
  (stable, so rows keep their order), then one program per (page, token block) walks only its own rows,
  ``BLOCK_Q`` at a time, as a product ``W [BLOCK_P, BLOCK_Q] @ q[rows] [BLOCK_Q, D]`` on tensor cores, where
  ``W[s, r] = g[query(r), j]`` if row ``r``'s argmax is ``s`` and 0 otherwise (built in registers). Each
  (row, page) pair is visited once, instead of once per token block of the page (a dense one-hot product over
  all rows costs as much as the forward). No atomics: a deterministic result. For bf16/fp16 inputs ``g`` is
  rounded to the input dtype in ``W`` (with fp16's range, tiny gradients lose precision); fp32/fp64 inputs stay
  exact to their precision. Besides inputs and gradients, memory is the argmax indices, one packed copy of the
  pages and the sorted row lists of a bounded chunk of pages; no similarity block larger than a tile exists.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["FusedMaxSim", "PackedPages", "QueryTiles", "fused_maxsim", "maxsim_packed", "maxsim_padded_fused"]


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


@dataclass
class PackedPages:
    """Pages as one token matrix ``tokens [T, D]`` and ``offsets [N + 1]`` (int64, on the tokens' device)."""

    tokens: Tensor
    offsets: Tensor

    @classmethod
    def pack(cls, pages: Sequence[Tensor], dtype: torch.dtype | None = None, pin: bool = False) -> PackedPages:
        """Concatenate ``[L_i, D]`` pages (``pin``: into page-locked host memory, for asynchronous uploads)."""
        lengths = torch.tensor([p.shape[0] for p in pages], dtype=torch.int64)
        if bool((lengths == 0).any()):
            raise ValueError("every page needs at least one token")
        offsets = torch.zeros(len(pages) + 1, dtype=torch.int64)
        offsets[1:] = lengths.cumsum(0)
        if not pin:
            return cls(torch.cat(list(pages)).to(dtype or pages[0].dtype), offsets.to(pages[0].device))
        tokens = torch.empty(int(offsets[-1]), pages[0].shape[1], dtype=dtype or pages[0].dtype, pin_memory=True)
        for page, first in zip(pages, offsets.tolist()):  # converted straight into the buffer: no second copy
            tokens[first:first + page.shape[0]].copy_(page)
        return cls(tokens, offsets)

    @classmethod
    def from_padded(cls, d_emb: Tensor, d_mask: Tensor) -> PackedPages:
        """Pack the valid tokens of ``d_emb [N, L, D]`` (bool ``d_mask [N, L]``), page by page in token order."""
        offsets = torch.zeros(d_emb.shape[0] + 1, dtype=torch.int64, device=d_emb.device)
        offsets[1:] = d_mask.sum(1).cumsum(0)
        return cls(d_emb.reshape(-1, d_emb.shape[-1])[d_mask.flatten()], offsets)

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    def lengths(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]


@dataclass
class QueryTiles:
    """Query tokens packed into tiles of ``block_q`` rows, each holding whole queries (or parts of long ones).

    ``rows [R, D]`` (zero rows belong to no query), ``source [R]`` (position of each row's token in the flat
    input, ``-1`` for empty rows), ``seg [R]`` (the row's part slot within its tile, ``nseg`` for empty rows),
    ``tile_part [n_tiles, nseg]`` (part ids, ``-1`` for unused slots), ``part_query [P]`` and ``row_query [R]``
    (query ids; ``0`` for empty rows, whose values are never used).
    """

    rows: Tensor
    source: Tensor
    seg: Tensor
    tile_part: Tensor
    part_query: Tensor
    row_query: Tensor
    block_q: int
    nseg: int

    @classmethod
    def build(cls, flat: Tensor, token_pos: Tensor, lengths: list[int], block_q: int) -> QueryTiles:
        """Tiles over queries whose valid tokens are ``flat[token_pos]``, grouped by query with ``lengths``."""
        parts, tiles = _plan_parts(lengths, block_q)  # parts: (query, first token, length, row)
        device = flat.device
        n_rows = max(tiles, 1) * block_q
        p = torch.tensor(parts, dtype=torch.int64).reshape(-1, 4)
        starts = torch.zeros(len(lengths), dtype=torch.int64)
        starts[1:] = torch.tensor(lengths[:-1], dtype=torch.int64).cumsum(0)
        slot = _slot_in_tile(p[:, 3], block_q)
        nseg = triton.next_power_of_2(int(slot.max()) + 1 if slot.numel() else 1)
        rep = torch.repeat_interleave(torch.arange(p.shape[0]), p[:, 2])
        within = torch.arange(rep.numel()) - (p[:, 2].cumsum(0) - p[:, 2])[rep]
        row = p[rep, 3] + within
        source = torch.full((n_rows,), -1, dtype=torch.int64)
        source[row] = token_pos.cpu()[starts[p[rep, 0]] + p[rep, 1] + within]
        seg = torch.full((n_rows,), nseg, dtype=torch.int32)
        seg[row] = slot[rep].to(torch.int32)
        row_query = torch.zeros(n_rows, dtype=torch.int32)
        row_query[row] = p[rep, 0].to(torch.int32)
        tile_part = torch.full((max(tiles, 1), nseg), -1, dtype=torch.int32)
        tile_part[p[:, 3] // block_q, slot] = torch.arange(p.shape[0], dtype=torch.int32)
        source = source.to(device)
        rows = flat.new_zeros(n_rows, flat.shape[1])
        rows[row.to(device)] = flat[source[row.to(device)]]
        return cls(rows.contiguous(), source, seg.to(device), tile_part.to(device), p[:, 0].to(device),
                   row_query.to(device), block_q, nseg)

    @property
    def n_tiles(self) -> int:
        return self.tile_part.shape[0]


MAX_PARTS_PER_TILE = 32  # bounds the segmented sum's [parts, BLOCK_Q] selection in registers


def _plan_parts(lengths: list[int], block_q: int) -> tuple[list[tuple[int, int, int, int]], int]:
    """Parts ``(query, first token, length, first row)``: longest queries first, next-fit into tiles.

    A tile is closed when the next part does not fit or it holds ``MAX_PARTS_PER_TILE`` parts.
    """
    parts: list[tuple[int, int, int, int]] = []
    tiles, used, count = 0, block_q, 0
    for query in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for first in range(0, lengths[query], block_q):
            size = min(block_q, lengths[query] - first)
            if used + size > block_q or count == MAX_PARTS_PER_TILE:
                tiles, used, count = tiles + 1, 0, 0
            parts.append((query, first, size, (tiles - 1) * block_q + used))
            used, count = used + size, count + 1
    return parts, tiles


def _slot_in_tile(first_rows: Tensor, block_q: int) -> Tensor:
    """Index of each part among the parts of its tile (parts are listed tile by tile)."""
    tile = first_rows // block_q
    index = torch.arange(tile.numel())
    is_first = torch.ones_like(tile, dtype=torch.bool)
    is_first[1:] = tile[1:] != tile[:-1]
    first_of_tile = torch.cummax(torch.where(is_first, index, 0), 0).values
    return index - first_of_tile


@dataclass(frozen=True)
class BlockConfig:
    """Tile sizes and launch parameters (``block_p_grad``: page-token block of the page-gradient kernel;
    ``pages_per_program``: pages each forward program scores with its query tile, loaded once).

    ``fp32_precision`` is how fp32 inputs are multiplied: ``"tf32x3"`` (three tensor-core passes, fp32-level
    accuracy) or ``"ieee"`` (exact products on the FMA units). ``split_fp32`` scores fp32 inputs instead as three
    fp16 products over their halves (see :func:`_split_fp16`): fp32-level accuracy at twice TF32's tensor-core
    rate. It applies to the forward kernel (evaluation) only.
    """

    block_q: int
    block_p: int
    num_warps: int
    num_stages: int
    block_p_grad: int = 64
    fp32_precision: str = "tf32x3"
    split_fp32: bool = False
    pages_per_program: int = 1

    def precision(self, dtype: torch.dtype) -> str:
        """``tl.dot`` input precision for ``dtype`` (Triton's default for 16-bit inputs: exact products)."""
        return {torch.float64: "ieee", torch.float32: self.fp32_precision}.get(dtype, "tf32")


def block_config(device: torch.device, dtype: torch.dtype, loss: bool = False) -> BlockConfig:
    """Tile sizes for ``device`` (see :func:`block_config_for`); Triton's interpreter off CUDA."""
    if device.type != "cuda":  # Triton's interpreter: block sizes only set the number of programs
        return BlockConfig(32, 32, 1, 1, 32, "ieee")
    props = torch.cuda.get_device_properties(device)
    return block_config_for(getattr(props, "shared_memory_per_block_optin", 0), dtype, loss)


def block_config_for(shared_memory: int, dtype: torch.dtype, loss: bool = False) -> BlockConfig:
    """Tile sizes for a CUDA device with ``shared_memory`` bytes per block (opt-in): large tensor-core tiles
    where shared memory allows them.

    Evaluation takes 256-row query tiles (fastest in ``bench/maxsim_fused.py``'s sweep on an H200); the loss keeps
    128 rows, since its argmax and row-gradient kernels hold more per row in registers. fp32 evaluation is scored
    as three fp16 products (``split_fp32``) in 128-row tiles, whose two fp16 halves hold as many registers as
    bf16's 256-row tile.
    """
    if dtype == torch.float64:  # exactness checks: small tiles keep 8-byte operands in registers and shared memory
        return BlockConfig(32, 32, 4, 2, 32)
    if shared_memory >= 160 * 1024:  # A100, H100, H200, B200
        if dtype.itemsize <= 2:
            return BlockConfig(128, 64, 8, 3, 64) if loss else BlockConfig(256, 64, 8, 3)
        return BlockConfig(64, 64, 4, 3) if loss else BlockConfig(128, 64, 8, 3, split_fp32=True)
    return BlockConfig(64, 64, 4, 2, 64)


def _acc(dtype: torch.dtype) -> tuple[torch.dtype, tl.dtype]:
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def _launch_forward(tiles: QueryTiles, pages: PackedPages, with_argmax: bool,
                    cfg: BlockConfig) -> tuple[Tensor, Tensor | None]:
    """Per-part scores ``[P, Nd]`` and, with ``with_argmax``, page-local argmax indices ``int32 [Nd, R]``."""
    dim = tiles.rows.shape[1]
    torch_acc, tl_acc = _acc(tiles.rows.dtype)
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


LO_SCALE = 2048.0  # 2**11: the low fp16 half is stored scaled up, clear of fp16's subnormal range
SPLIT_BLOCK = 4096  # elements per program of the split kernel


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


def _sum_parts(part_scores: Tensor, tiles: QueryTiles, n_queries: int) -> Tensor:
    """Query scores ``[Nq, Nd]`` from part scores (queries without tokens score 0)."""
    out = part_scores.new_zeros(n_queries, part_scores.shape[1])
    return out.index_add_(0, tiles.part_query, part_scores)


def maxsim_packed(queries: Sequence[Tensor], pages: PackedPages, compute_dtype: torch.dtype,
                  device: torch.device, chunk_tokens: int = 1 << 22, cfg: BlockConfig | None = None) -> Tensor:
    """Evaluation MaxSim ``[Nq, Nd]`` (float32) of unpadded queries against packed pages, on ``device``.

    Pages are uploaded ``chunk_tokens`` tokens at a time (asynchronously when ``pages`` is pinned), so device
    memory holds one chunk of pages besides the queries and the scores.
    """
    cfg = cfg or block_config(device, compute_dtype)
    out = torch.zeros(len(queries), len(pages), dtype=torch.float32, device=device)
    if not len(queries) or not len(pages):
        return out
    lengths = [int(q.shape[0]) for q in queries]
    flat = torch.cat(list(queries)).to(device, compute_dtype)
    tiles = QueryTiles.build(flat, torch.arange(flat.shape[0], device=device), lengths, cfg.block_q)
    offsets = pages.offsets.cpu()
    first = 0
    while first < len(pages):
        last = int(torch.searchsorted(offsets, offsets[first] + chunk_tokens, right=True)) - 1
        last = min(max(last, first + 1), len(pages))
        span = slice(int(offsets[first]), int(offsets[last]))
        chunk = PackedPages(pages.tokens[span].to(device, non_blocking=True).to(compute_dtype),
                            (offsets[first:last + 1] - offsets[first]).to(device))
        part_scores, _ = _launch_forward(tiles, chunk, False, cfg)
        out[:, first:last] = _sum_parts(part_scores, tiles, len(queries)).float()
        first = last
    return out


def maxsim_padded_fused(q_emb: Tensor, q_mask: Tensor, d_emb: Tensor, d_mask: Tensor,
                        compute_dtype: torch.dtype) -> Tensor:
    """Evaluation MaxSim ``[Nq, Nd]`` (float32) of padded inputs with boolean masks, on their device."""
    queries = [e[m] for e, m in zip(q_emb, q_mask)]
    return maxsim_packed(queries, PackedPages.from_padded(d_emb, d_mask), compute_dtype, q_emb.device)


class FusedMaxSim(torch.autograd.Function):
    """Differentiable MaxSim ``[Nq, Nd]`` (float32; float64 for float64 inputs) via the fused kernels.

    Saves the inputs and the argmax indices; backward repacks the inputs and runs the gather (grad of the
    queries) and one-hot scatter (grad of the pages) kernels, then scatters the packed gradients back to the
    padded layout (padded positions get zero gradient).
    """

    @staticmethod
    def forward(ctx, q_emb: Tensor, q_mask: Tensor, d_emb: Tensor, d_mask: Tensor, cfg: BlockConfig) -> Tensor:
        tiles, pages = _pack_padded(q_emb, q_mask, d_emb, d_mask, cfg.block_q)
        part_scores, idx = _launch_forward(tiles, pages, True, cfg)
        ctx.save_for_backward(q_emb, q_mask, d_emb, d_mask, idx)
        ctx.cfg, ctx.no_pairs = cfg, part_scores.numel() == 0  # then idx was never written
        return _sum_parts(part_scores, tiles, q_emb.shape[0])

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q_emb, q_mask, d_emb, d_mask, idx = ctx.saved_tensors
        cfg = ctx.cfg
        tiles, pages = _pack_padded(q_emb, q_mask, d_emb, d_mask, cfg.block_q)
        grad_q = torch.zeros_like(q_emb) if ctx.needs_input_grad[0] else None
        grad_d = torch.zeros_like(d_emb) if ctx.needs_input_grad[2] else None
        if ctx.no_pairs:
            return grad_q, None, grad_d, None, None
        gt = grad_out.to(_acc(q_emb.dtype)[0]).T.contiguous()  # [Nd, Nq]: see _grad_q_kernel
        if grad_q is not None:
            rows = _grad_rows(tiles, pages, idx, gt, cfg)
            filled = tiles.source >= 0
            grad_q.view(-1, q_emb.shape[-1])[tiles.source[filled]] = rows[filled].to(q_emb.dtype)
        if grad_d is not None:
            tokens = _grad_tokens(tiles, pages, idx, gt, cfg)
            grad_d.view(-1, d_emb.shape[-1])[d_mask.flatten()] = tokens.to(d_emb.dtype)
        return grad_q, None, grad_d, None, None


def _pack_padded(q_emb: Tensor, q_mask: Tensor, d_emb: Tensor, d_mask: Tensor,
                 block_q: int) -> tuple[QueryTiles, PackedPages]:
    """Query tiles and packed pages of padded inputs (the loss keeps the input dtype)."""
    flat = q_emb.reshape(-1, q_emb.shape[-1])
    tiles = QueryTiles.build(flat, q_mask.flatten().nonzero().flatten(), q_mask.sum(1).tolist(), block_q)
    return tiles, PackedPages.from_padded(d_emb, d_mask)


def _grad_rows(tiles: QueryTiles, pages: PackedPages, idx: Tensor, gt: Tensor, cfg: BlockConfig) -> Tensor:
    """Gradient of every query-tile row ``[R, D]`` (accumulation dtype)."""
    dim = tiles.rows.shape[1]
    torch_acc, tl_acc = _acc(tiles.rows.dtype)
    out = torch.empty(tiles.rows.shape, dtype=torch_acc, device=tiles.rows.device)
    _grad_q_kernel[(tiles.n_tiles,)](pages.tokens, pages.offsets, idx, gt, tiles.row_query, out, tiles.rows.shape[0],
                                     len(pages), gt.shape[1], DIM=dim, BLOCK_Q=tiles.block_q,
                                     BLOCK_D=max(16, triton.next_power_of_2(dim)), ACC=tl_acc,
                                     num_warps=cfg.num_warps)
    return out


SORTED_ENTRIES = 1 << 27  # row-list entries per chunk of pages in the page-gradient pass (512 MiB as int32)
SORT_STEP = 1 << 13  # rows x blocks compared per step of the counting sort (its registers)
INT32_ENTRIES = 1 << 31  # row-list entries (row * block_p_grad + token) below this are stored as int32


def _grad_tokens(tiles: QueryTiles, pages: PackedPages, idx: Tensor, gt: Tensor, cfg: BlockConfig) -> Tensor:
    """Gradient of every packed page token ``[T, D]`` (accumulation dtype).

    Pages go in chunks whose sorted row lists (one entry per query row and page; int32 unless ``rows x
    block_p_grad`` needs 64 bits) stay within ``SORTED_ENTRIES``, so the backward's extra memory is bounded
    whatever the batch.
    """
    dim = tiles.rows.shape[1]
    torch_acc, tl_acc = _acc(tiles.rows.dtype)
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


def fused_maxsim(q_emb: Tensor, q_mask: Tensor, d_emb: Tensor, d_mask: Tensor,
                 cfg: BlockConfig | None = None) -> Tensor:
    """Differentiable MaxSim ``[Nq, Nd]`` of padded inputs via the fused kernels (float32, or float64 for float64)."""
    if d_emb.shape[0] and not bool(d_mask.any(dim=1).all()):
        raise ValueError("every page needs at least one valid token (a d_mask row is all False)")
    return FusedMaxSim.apply(q_emb, q_mask, d_emb, d_mask, cfg or block_config(q_emb.device, q_emb.dtype, loss=True))
