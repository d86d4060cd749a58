"""``--score_dtype``: the precision of MaxSim scoring on a GPU, spelled the same by every evaluation CLI.

On CUDA the fused kernel scores in bfloat16 by default (its fastest path; scores within about 1e-2) or in float32
on request (fp32-level scores). Off CUDA the flag does not apply: scores keep the embeddings' dtype, so
:func:`score_dtype` returns None there and the MaxSim functions take their default.
"""
from __future__ import annotations

import argparse

import torch

from retriever.model.dtype import DTYPES

__all__ = ["add_score_dtype_argument", "score_dtype"]

SCORE_DTYPES = ("bfloat16", "float32")  # names of retriever.model.dtype.DTYPES the fused kernel scores in


def add_score_dtype_argument(parser: argparse.ArgumentParser) -> None:
    """``--score_dtype``: the precision of MaxSim scoring on a GPU (evaluation CLIs)."""
    parser.add_argument("--score_dtype", choices=SCORE_DTYPES, default="bfloat16",
                        help="MaxSim precision on CUDA: bfloat16 (default, the fused kernel's fastest path; scores "
                             "within about 1e-2) or float32 (fp32-level scores, whose rankings match float32 "
                             "references such as MTEB's up to fp32 rounding). On CPU, scores keep the embeddings' "
                             "dtype.")


def score_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The ``compute_dtype`` of the MaxSim functions for ``--score_dtype name`` on ``device`` (None off CUDA)."""
    return DTYPES[name] if device.type == "cuda" else None
