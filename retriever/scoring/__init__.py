"""Every way of scoring queries against pages: dense dot products and ColBERT-style MaxSim.

* exact (:mod:`~retriever.scoring.exact`): ``dense_scores`` and ``maxsim``, the differentiable definition on
  padded tensors;
* blocked (:mod:`~retriever.scoring.blocked`): evaluation MaxSim with bounded memory, ``maxsim_blocked`` (padded),
  ``maxsim_lists`` (ragged lists, length-grouped) and ``maxsim_scorer`` (fixed pages, many query blocks);
* differentiable (:mod:`~retriever.scoring.differentiable`): the contrastive loss's ``differentiable_scores``,
  with ``ChunkedMaxSim`` / ``chunked_maxsim`` (memory bounded by one block);
* fused (:mod:`~retriever.scoring.fused`): the Triton kernels the blocked and differentiable paths dispatch to on
  CUDA (``fused_maxsim_available``);
* precision (:mod:`~retriever.scoring.precision`): the evaluation CLIs' ``--score_dtype`` flag.

Callers import from here; only the kernel benchmarks reach into :mod:`retriever.scoring.fused` directly.
"""
from retriever.scoring.blocked import maxsim_blocked, maxsim_lists, maxsim_scorer
from retriever.scoring.differentiable import ChunkedMaxSim, chunked_maxsim, differentiable_scores
from retriever.scoring.exact import dense_scores, maxsim
from retriever.scoring.fused import fused_maxsim_available
from retriever.scoring.precision import add_score_dtype_argument, score_dtype

__all__ = ["ChunkedMaxSim", "add_score_dtype_argument", "chunked_maxsim", "dense_scores", "differentiable_scores",
           "fused_maxsim_available", "maxsim", "maxsim_blocked", "maxsim_lists", "maxsim_scorer", "score_dtype"]
