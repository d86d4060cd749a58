"""int8 and binary page (and query) vectors and their MaxSim.

* int8: each vector ``x`` becomes ``round(x / s)`` in [-127, 127] with its own scale ``s = max|x| / 127``
  (symmetric, per vector); stored as D bytes plus a float32 scale. Two int8 vectors score ``s_a s_b (c_a · c_b)``:
  the integer dot product is computed exactly in float32 while ``127² D < 2²⁴`` (D <= 1040), so scoring the
  dequantized vectors ``s c`` with the float MaxSim is that product up to float32 rounding of the scales.
* binary: each vector becomes its sign bits (``x > 0``), packed 8 per byte (D/8 bytes). Two bit vectors score
  ``D - 2 · hamming`` (the dot product of their ±1 vectors), the Hamming distance counted with NumPy's popcount
  (``bitwise_count``) over XORed bytes; MaxSim sums each query vector's best page vector.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["BinaryVectors", "Int8Vectors", "as_float", "binary_maxsim", "to_binary", "to_int8"]


@dataclass(frozen=True)
class Int8Vectors:
    codes: Tensor   # [L, D] int8
    scales: Tensor  # [L] float32

    def dequantized(self) -> Tensor:
        return self.codes.to(torch.float32) * self.scales[:, None]

    @property
    def nbytes(self) -> int:
        return self.codes.numel() + 4 * self.scales.numel()


@dataclass(frozen=True)
class BinaryVectors:
    bits: np.ndarray  # [L, ceil(D / 8)] uint8, packed sign bits
    dim: int

    @property
    def nbytes(self) -> int:
        return int(self.bits.nbytes)


def to_int8(x: Tensor) -> Int8Vectors:
    """Per-vector symmetric int8 codes of ``x`` [L, D] (a zero vector gets scale 1 and zero codes)."""
    x = x.detach().to(torch.float32).cpu()
    scales = x.abs().amax(-1) / 127.0
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = torch.round(x / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return Int8Vectors(codes, scales)


def to_binary(x: Tensor) -> BinaryVectors:
    """Packed sign bits of ``x`` [L, D] (bit set where the coordinate is > 0)."""
    return BinaryVectors(np.packbits(x.detach().cpu().numpy() > 0, axis=-1), x.shape[-1])


def as_float(x: Tensor, kind: str) -> Tensor:
    """``x`` [L, D] as float vectors whose dot products are those of its ``kind`` representation: the dequantized
    int8 vectors, or the ±1 sign vectors (``D - 2 · hamming``); unchanged for ``none``."""
    if kind == "int8":
        return to_int8(x).dequantized()
    if kind == "binary":
        return torch.where(x.detach().cpu() > 0, 1.0, -1.0)
    return x


def binary_maxsim(queries: list[BinaryVectors], pages: list[BinaryVectors]) -> Tensor:
    """[Nq, Np] float32 MaxSim of ±1 vectors: per query vector, ``D - 2 · hamming`` to its closest page vector,
    summed over the query's vectors."""
    if not pages:
        return torch.zeros(len(queries), 0)
    dim = queries[0].dim if queries else pages[0].dim
    all_bits = np.concatenate([p.bits for p in pages])                       # [sum Lp, B]
    starts = np.cumsum([0] + [len(p.bits) for p in pages[:-1]])
    out = np.empty((len(queries), len(pages)), dtype=np.float32)
    for row, query in enumerate(queries):
        hamming = np.bitwise_count(query.bits[:, None, :] ^ all_bits[None, :, :]).sum(-1, dtype=np.int32)
        similarity = dim - 2 * hamming                                      # [Lq, sum Lp]
        out[row] = np.maximum.reduceat(similarity, starts, axis=1).sum(0)
    return torch.from_numpy(out)
