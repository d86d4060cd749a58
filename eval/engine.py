"""Sharded scoring engine shared by the retrieval and image<->text evaluators.

Design
------
* Encoders are duck-typed by :class:`Encoder`: ``encode_queries(texts, batch_size, progress)``,
  ``encode_pages(images, batch_size, ids, progress)`` returning ``[N, D]`` (dense) or a list of ``[L_i, D]``
  (multi-vector), plus the ``multi_vector`` flag (``RetrieverEncoder`` has all three).
* Under ``torchrun`` every rank encodes a contiguous shard of the queries (all-gathered afterwards: queries are
  small) and a contiguous shard of the corpus, chunk by chunk. Each chunk is scored against all queries
  (dense dot or blocked MaxSim) and folded into a running top-k, so neither the score matrix nor all page
  embeddings are ever held; the per-rank top-k lists are merged with one all_gather.
* Collectives run under the process group's timeout (:func:`retriever.process_group.joined_process_group`), so a
  dead rank makes the others fail with a message instead of hanging.
* How a corpus is encoded and scored (batch and chunk sizes, score device and precision, where the state goes) is
  one :class:`ScoringSettings`, passed whole from the CLIs and training down to :func:`score_shard`; how many
  results to keep (``k``) is the caller's question, not a setting.
* Resumable: after every chunk a rank saves its top-k state (``torch.save`` of tensors, reloaded with
  ``weights_only=True``) under ``state_dir``, replacing the previous one atomically, with the fingerprint of what
  produced it: the encoder's (checkpoint identity, dtype, head, pooling, dimensions, prompts, resolution), the
  query and page ids, ``k``, the world size, the chunk size and the score dtype. A rerun with the same fingerprint
  continues from the next chunk; with another one, it warns naming each difference and scores from the first
  chunk (the state is a cache: recomputing is always right). A full disk stops the run with one line naming the
  state file, whose previous version is intact.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from data_prep.outputs import RESUME_HINT, atomic_output, settings_changes
from eval.topk import RunningTopK, merge_across_ranks, select_topk
from retriever.index import IndexScorer, IndexSettings
from retriever.model.embeddings import pad_multivector
from retriever.model.identity import ids_digest
from retriever.process_group import RankInfo, shard_range
from retriever.scoring import dense_scores, maxsim_lists

__all__ = ["Encoder", "ScoringSettings", "encode_sharded_queries", "score_shard", "trec_tie_key"]

logger = logging.getLogger(__name__)
Embeddings = Tensor | list[Tensor]


class Encoder(Protocol):
    """What the evaluators need from a model; ``fingerprint`` (what decides its embeddings, see
    :attr:`retriever.model.encoder.RetrieverEncoder.fingerprint`) only for a resumable state."""

    multi_vector: bool
    fingerprint: dict[str, Any]

    def encode_queries(self, texts: Sequence[str], batch_size: int, progress: bool) -> Embeddings: ...

    def encode_pages(self, images: Sequence[Image.Image], batch_size: int, ids: Sequence[str] | None,
                     progress: bool) -> Embeddings: ...


@dataclass(frozen=True)
class ScoringSettings:
    """How :func:`score_shard` encodes and scores: ``batch_size`` pages per encoder call, ``chunk_pages`` pages encoded
    and scored at a time, scores computed on ``device`` (MaxSim in ``compute_dtype`` when given, see
    ``--score_dtype``), the running top-k saved per chunk under ``state_dir`` when given (resumable), and multi-vector
    pages scored through the compressed ``index`` (:mod:`retriever.index`; the default is exact MaxSim)."""

    batch_size: int = 8
    chunk_pages: int = 256
    device: torch.device | str = "cpu"
    compute_dtype: torch.dtype | None = None
    state_dir: Path | None = None
    index: IndexSettings = IndexSettings()


def encode_sharded_queries(encoder: Encoder, texts: Sequence[str], batch_size: int, info: RankInfo) -> Embeddings:
    """Every rank encodes its shard of ``texts``; all ranks return the embeddings of all texts, in order."""
    part = shard_range(len(texts), info.rank, info.world)
    local = encoder.encode_queries([texts[i] for i in part], batch_size=batch_size, progress=info.is_main) \
        if len(part) else []
    local_list = list(local) if isinstance(local, list) else list(local.unbind(0))
    if info.world > 1:
        gathered: list[Any] = [None] * info.world
        dist.all_gather_object(gathered, local_list)
        local_list = [e for shard in gathered for e in shard]
    if encoder.multi_vector:
        return local_list
    return torch.stack(local_list) if local_list else torch.empty(0, 0)


def _scorer(multi: bool, device: torch.device, compute_dtype: torch.dtype | None) -> Callable[[Any, Embeddings], Tensor]:
    """Score function ``(prepared queries, page embeddings) -> [Nq, C]`` on ``device``."""
    if multi:
        return lambda q, pages: maxsim_lists(q, pages, compute_dtype=compute_dtype)  # uploads pages itself
    return lambda q, pages: dense_scores(q, pages.to(device, q.dtype)).float()


def trec_tie_key(ids: Sequence[str]) -> Tensor:
    """Per position, the rank of its id in descending id order (trec_eval's order among equal scores)."""
    order = sorted(range(len(ids)), key=ids.__getitem__, reverse=True)
    key = torch.empty(len(ids), dtype=torch.long)
    key[torch.tensor(order, dtype=torch.long)] = torch.arange(len(ids))
    return key


def _state_fingerprint(encoder: Encoder, query_ids: Sequence[str], page_ids: Sequence[str], k: int, info: RankInfo,
                       settings: ScoringSettings) -> dict[str, Any]:
    """What decides a rank's running top-k (see the module docstring)."""
    return {**encoder.fingerprint, "query ids": ids_digest(query_ids), "queries": len(query_ids),
            "page ids": ids_digest(page_ids), "pages": len(page_ids), "k": k, "world size": info.world,
            "chunk_pages": settings.chunk_pages, "score dtype": str(settings.compute_dtype),
            "index": settings.index.to_dict()}


def _load_state(state_file: Path, fingerprint: dict[str, Any], top: RunningTopK) -> int:
    """The next chunk to score: the saved one, with ``top`` restored, when ``state_file`` was made with
    ``fingerprint``; else 0 (a state made otherwise is warned about, naming what changed, and scored again)."""
    if not state_file.exists():
        return 0
    saved = torch.load(state_file, weights_only=True)
    changed = settings_changes(json.loads(saved["fingerprint"]), fingerprint)
    if changed:
        logger.warning("%s: made by another evaluation than this one: %s; scoring from the first chunk again",
                       state_file, ", ".join(changed))
        return 0
    top.values, top.indices, top.payload = saved["values"], saved["indices"], saved.get("payload")
    return int(saved["next_chunk"])


def _save_state(state_file: Path, top: RunningTopK, next_chunk: int, fingerprint: dict[str, Any]) -> None:
    """The running top-k after ``next_chunk`` chunks, replacing the previous state all or nothing."""
    state_file.parent.mkdir(parents=True, exist_ok=True)
    done = next_chunk - 1
    kept = f"the state saved after {done} scored chunk(s) is intact; {RESUME_HINT}" if done else RESUME_HINT
    with atomic_output(state_file, kept) as handle:
        state = {"values": top.values, "indices": top.indices, "next_chunk": next_chunk,
                 "fingerprint": json.dumps(fingerprint)}
        torch.save(state if top.payload is None else {**state, "payload": top.payload}, handle)


def _remove_states(state_file: Path, info: RankInfo) -> None:
    """After the merge: this rank's state, and on the main rank any left by a run of another world size."""
    state_file.unlink(missing_ok=True)
    if info.is_main:
        for stale in state_file.parent.glob("topk_rank*.pt"):
            stale.unlink(missing_ok=True)


def _fold_candidates(top: RunningTopK, index: IndexScorer, pages: list[Tensor], positions: Tensor) -> None:
    """Two-stage search over one chunk: each query's best ``top.k`` pages by the first stage, and their scores by
    the stored vectors (computed only for the pages some query kept). Any page of the global first-stage top is in
    its chunk's, so the result does not depend on chunking."""
    first = index.first_stage(pages)
    values, kept, _ = select_topk(first, positions.expand(first.shape[0], -1), min(top.k, len(pages)), top.tie_key)
    local = kept - positions[0]
    columns = torch.unique(local)
    final = index.stored([pages[int(c)] for c in columns])
    top.update(values, kept, final.gather(1, torch.searchsorted(columns, local)))


def score_shard(encoder: Encoder, query_emb: Embeddings, page_ids: Sequence[str],
                load_pages: Callable[[Sequence[int]], list[Image.Image]], k: int, info: RankInfo,
                settings: ScoringSettings = ScoringSettings(),
                on_chunk: Callable[[Tensor, range], None] | None = None,
                query_ids: Sequence[str] = ()) -> list[list[tuple[int, float]]]:
    """Global top-``k`` corpus positions per query ``[(position, score), ...]``, identical on all ranks.

    ``load_pages(positions)`` gives the images of those positions of ``page_ids``. This rank encodes and scores its
    shard of the corpus in chunks of ``settings.chunk_pages``. ``on_chunk(scores, span)`` sees every ``[Nq, C]``
    score chunk (used for image->text ranking). With ``settings.state_dir`` the running top-k is checkpointed per
    chunk and resumed (only when ``on_chunk`` is None, since its state is not saved), and ``query_ids`` (the ids
    of ``query_emb``'s rows) are part of the state's fingerprint.
    """
    multi = encoder.multi_vector
    device = torch.device(settings.device)
    if multi:
        queries: Any = tuple(t.to(device) for t in pad_multivector(query_emb)) if len(query_emb) else None
    else:
        queries = query_emb.to(device)
    n_queries = len(query_emb)
    index = IndexScorer(settings.index, list(query_emb), device, settings.compute_dtype) \
        if multi and n_queries and not settings.index.exact else None
    two_stage = index is not None and index.two_stage
    top = RunningTopK(n_queries, settings.index.rerank_depth if two_stage else k, trec_tie_key(page_ids), two_stage)
    score = _scorer(multi, device, settings.compute_dtype)
    n_pages, chunk = len(page_ids), settings.chunk_pages
    shard = shard_range(n_pages, info.rank, info.world)
    chunks = [shard[i:i + chunk] for i in range(0, len(shard), chunk)]
    state_file, fingerprint, start = None, {}, 0
    if settings.state_dir is not None and on_chunk is None:
        if len(query_ids) != n_queries:
            raise ValueError(f"a resumable state needs the ids of the {n_queries} queries, got {len(query_ids)}")
        fingerprint = _state_fingerprint(encoder, query_ids, page_ids, k, info, settings)
        state_file = Path(settings.state_dir) / f"topk_rank{info.rank}.pt"
        start = _load_state(state_file, fingerprint, top)
        if start:
            logger.info("rank %d: resuming at chunk %d/%d from %s", info.rank, start, len(chunks), state_file)
    for ci in tqdm(range(start, len(chunks)), desc=f"scoring pages (rank {info.rank})", disable=not info.is_main,
                   initial=start, total=len(chunks)):
        span = chunks[ci]
        emb = encoder.encode_pages(load_pages(span), batch_size=settings.batch_size, ids=[page_ids[i] for i in span],
                                   progress=False)
        positions = torch.tensor(list(span))
        if two_stage:
            _fold_candidates(top, index, index.pages(list(emb)), positions)
        else:
            scores = index.stored(index.pages(list(emb))) if index is not None else \
                score(queries, emb) if n_queries else torch.empty(0, len(span))
            if on_chunk is not None:
                on_chunk(scores, span)
            top.update(scores, positions)
        if state_file is not None:
            _save_state(state_file, top, ci + 1, fingerprint)
    result = merge_across_ranks(top, k)
    if state_file is not None:
        _remove_states(state_file, info)
    return result
