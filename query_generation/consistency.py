"""Retrieval consistency: keep a query only if a given retriever ranks one of its positive pages in the top K of
the whole page store (the Docmatix-IR filter). Scoring is the evaluator's: :func:`eval.engine.score_shard` encodes
the corpus chunk by chunk and keeps a running top-K per query, so no query x corpus score matrix is built."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from data_prep.store import PageStore
from eval.engine import ScoringSettings, score_shard
from retriever.model.encoder import RetrieverEncoder
from retriever.model.saved import load_encoder
from retriever.process_group import RankInfo


def load_retriever(path: str, trust_remote_code: bool = False) -> RetrieverEncoder:
    """The retriever checkpoint through the project's one loader, in eval mode (on the GPU when there is one)."""
    return load_encoder(path, device="cuda" if torch.cuda.is_available() else None,
                        trust_remote_code=trust_remote_code)


def consistency_reasons(encoder: Any, store: PageStore, queries: Sequence[str], positives: Sequence[Sequence[str]],
                        top_k: int, batch_size: int = 8, chunk_pages: int = 256) -> list[str | None]:
    """Per query, None when a positive page is in the retriever's top ``top_k``, else the rejection reason."""
    ids = store.ids()
    known = set(ids)
    query_emb = encoder.encode_queries(list(queries), batch_size=batch_size, progress=True)
    top = score_shard(encoder, query_emb, ids, lambda span: [store.get_image(ids[i]) for i in span], top_k,
                      RankInfo.current(), ScoringSettings(batch_size, chunk_pages))
    reasons: list[str | None] = []
    for pos, found in zip(positives, top):
        ranked = [ids[i] for i, _ in found]
        if not known.intersection(pos):
            reasons.append(f"retrieval: positive page(s) {list(pos)} not in store {store.path}")
        elif set(pos) & set(ranked):
            reasons.append(None)
        else:
            reasons.append(f"retrieval: no positive page in the top {top_k} (rank 1: {ranked[0] if ranked else None})")
    return reasons
