"""The fused MaxSim's data layout: pages packed into one token matrix, queries packed into tiles of whole queries.

:class:`PackedPages` concatenates pages without padding (``tokens [T, D]`` and ``offsets``). :class:`QueryTiles`
puts query tokens into tiles of ``block_q`` rows: queries are taken longest first and a tile is closed when the
next one does not fit or it holds ``MAX_PARTS_PER_TILE`` queries (a query longer than a tile is split into parts,
whose scores :meth:`QueryTiles.sum_parts` adds afterwards). Rows left over at a tile's end are zero and belong to
no query. Both are plain tensors on the device; the kernels read them through pointers.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
from torch import Tensor

__all__ = ["MAX_PARTS_PER_TILE", "PackedPages", "QueryTiles"]


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

    def sum_parts(self, part_scores: Tensor, n_queries: int) -> Tensor:
        """Query scores ``[Nq, Nd]`` from part scores ``[P, Nd]`` (queries without tokens score 0)."""
        out = part_scores.new_zeros(n_queries, part_scores.shape[1])
        return out.index_add_(0, self.part_query, part_scores)


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
