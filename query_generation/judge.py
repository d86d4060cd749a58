"""LLM judge of queries: few-shot classification into self-contained (A, kept) and context-dependent (B, dropped).

The prompt file (default ``prompts/judge.txt``, slot ``{query}``) holds the examples; the model answers one letter
at temperature 0, through any generation backend. An answer that is not A or B rejects the query (the reason
keeps the answer), so a judge that misbehaves removes data visibly rather than letting it through.
"""
from __future__ import annotations

from collections.abc import Sequence

from tqdm import tqdm

from query_generation.generators import QueryGenerator, Decoding, Reply, Request
from query_generation.prompt import PromptFile

DECODING = Decoding(max_new_tokens=2, temperature=0.0)


def verdict(reply: Reply) -> str | None:
    """None to keep the query, else the rejection reason."""
    if reply.error is not None:
        return f"judge request failed: {reply.error}"
    answer = reply.texts[0].strip() if reply.texts else ""
    letter = answer[:1].upper()
    if letter == "A":
        return None
    if letter == "B":
        return "judge: context-dependent (answered B)"
    return f"judge: unusable answer {answer[:40]!r} (expected A or B)"


def judge_reasons(backend: QueryGenerator, prompt: PromptFile, queries: Sequence[str], keys: Sequence[str],
                  batch_size: int) -> list[str | None]:
    """Per query, None (self-contained) or the rejection reason."""
    reasons: list[str | None] = []
    for start in tqdm(range(0, len(queries), batch_size), desc="judge", unit="batch"):
        requests = [Request(key, prompt.messages(query=query), None, 0)
                    for query, key in zip(queries[start:start + batch_size], keys[start:start + batch_size])]
        reasons.extend(verdict(reply) for reply in backend.generate(requests, DECODING))
    return reasons
