"""Fused MaxSim on CUDA (Triton): evaluation scores, and the loss's forward (with argmax) and exact backward.

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

Modules
-------
* :mod:`~retriever.scoring.fused.kernels`: the ``@triton.jit`` kernels;
* :mod:`~retriever.scoring.fused.packing`: :class:`PackedPages` and :class:`QueryTiles` (the layout above);
* :mod:`~retriever.scoring.fused.config`: :class:`BlockConfig`, the tile sizes per device and dtype;
* :mod:`~retriever.scoring.fused.launch`: the kernel launches (forward, fp16 halves, both gradients);
* :mod:`~retriever.scoring.fused.evaluation`: ``maxsim_packed`` / ``maxsim_padded_fused`` (no autograd);
* :mod:`~retriever.scoring.fused.autograd`: :class:`FusedMaxSim` and ``fused_maxsim`` (the loss).

Callers outside :mod:`retriever.scoring` reach these through the scoring package, which dispatches here when
:func:`fused_maxsim_available`; this module itself imports no Triton, so it is importable everywhere.
"""
from __future__ import annotations

import importlib.util

import torch

__all__ = ["fused_maxsim_available"]


def fused_maxsim_available(device: torch.device) -> bool:
    """True where the fused Triton MaxSim serves the call: a CUDA device and an importable Triton."""
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None
