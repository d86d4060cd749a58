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
  ``weights_only=True``) under ``state_dir``, replacing the previous one atomically; a rerun with the same
  settings continues from the next chunk. A full disk stops the run with one line naming the state file, whose
  previous version is intact.
"""
from __future__ import annotations

import hashlib
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

from data_prep.outputs import RESUME_HINT, atomic_output
from eval.topk import RunningTopK, merge_across_ranks
from retriever.model.embeddings import pad_multivector
from retriever.process_group import RankInfo, shard_range
from retriever.scoring import dense_scores, maxsim_lists

__all__ = ["Encoder", "ScoringSettings", "encode_sharded_queries", "score_shard", "trec_tie_key"]

logger = logging.getLogger(__name__)
Embeddings = Tensor | list[Tensor]


class Encoder(Protocol):
    """What the evaluators need from a model."""

    multi_vector: bool

    def encode_queries(self, texts: Sequence[str], batch_size: int, progress: bool) -> Embeddings: ...

    def encode_pages(self, images: Sequence[Image.Image], batch_size: int, ids: Sequence[str] | None,
                     progress: bool) -> Embeddings: ...


@dataclass(frozen=True)
class ScoringSettings:
    """How :func:`score_shard` encodes and scores: ``batch_size`` pages per encoder call, ``chunk_pages`` pages encoded
    and scored at a time, scores computed on ``device`` (MaxSim in ``compute_dtype`` when given, see
    ``--score_dtype``), and the running top-k saved per chunk under ``state_dir`` when given (resumable)."""

    batch_size: int = 8
    chunk_pages: int = 256
    device: torch.device | str = "cpu"
    compute_dtype: torch.dtype | None = None
    state_dir: Path | None = None


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


def _state_key(settings: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _save_state(state_file: Path, top: RunningTopK, next_chunk: int) -> None:
    """The running top-k after ``next_chunk`` chunks, replacing the previous state all or nothing."""
    state_file.parent.mkdir(parents=True, exist_ok=True)
    done = next_chunk - 1
    kept = f"the state saved after {done} scored chunk(s) is intact; {RESUME_HINT}" if done else RESUME_HINT
    with atomic_output(state_file, kept) as handle:
        torch.save({"values": top.values, "indices": top.indices, "next_chunk": next_chunk}, handle)


def score_shard(encoder: Encoder, query_emb: Embeddings, page_ids: Sequence[str],
                load_pages: Callable[[Sequence[int]], list[Image.Image]], k: int, info: RankInfo,
                settings: ScoringSettings = ScoringSettings(),
                on_chunk: Callable[[Tensor, range], None] | None = None) -> list[list[tuple[int, float]]]:
    """Global top-``k`` corpus positions per query ``[(position, score), ...]``, identical on all ranks.

    ``load_pages(positions)`` gives the images of those positions of ``page_ids``. This rank encodes and scores its
    shard of the corpus in chunks of ``settings.chunk_pages``. ``on_chunk(scores, span)`` sees every ``[Nq, C]``
    score chunk (used for image->text ranking). With ``settings.state_dir`` the running top-k is checkpointed per
    chunk and resumed (only when ``on_chunk`` is None, since its state is not saved).
    """
    multi = encoder.multi_vector
    device = torch.device(settings.device)
    if multi:
        queries: Any = tuple(t.to(device) for t in pad_multivector(query_emb)) if len(query_emb) else None
    else:
        queries = query_emb.to(device)
    n_queries = len(query_emb)
    top = RunningTopK(n_queries, k, trec_tie_key(page_ids))
    score = _scorer(multi, device, settings.compute_dtype)
    n_pages, chunk = len(page_ids), settings.chunk_pages
    shard = shard_range(n_pages, info.rank, info.world)
    chunks = [shard[i:i + chunk] for i in range(0, len(shard), chunk)]
    state_file, start = None, 0
    if settings.state_dir is not None and on_chunk is None:
        key = _state_key({"n_q": n_queries, "n_pages": n_pages, "k": k, "world": info.world, "chunk": chunk})
        state_file = Path(settings.state_dir) / f"topk_{key}_rank{info.rank}.pt"
        if state_file.exists():
            saved = torch.load(state_file, weights_only=True)
            top.values, top.indices, start = saved["values"], saved["indices"], int(saved["next_chunk"])
            logger.info("rank %d: resuming at chunk %d/%d from %s", info.rank, start, len(chunks), state_file)
    for ci in tqdm(range(start, len(chunks)), desc=f"scoring pages (rank {info.rank})", disable=not info.is_main,
                   initial=start, total=len(chunks)):
        span = chunks[ci]
        emb = encoder.encode_pages(load_pages(span), batch_size=settings.batch_size, ids=[page_ids[i] for i in span],
                                   progress=False)
        scores = score(queries, emb) if n_queries else torch.empty(0, len(span))
        if on_chunk is not None:
            on_chunk(scores, span)
        top.update(scores, torch.tensor(list(span)))
        if state_file is not None:
            _save_state(state_file, top, ci + 1)
    result = merge_across_ranks(top)
    if state_file is not None and state_file.exists():
        state_file.unlink()
    return result
