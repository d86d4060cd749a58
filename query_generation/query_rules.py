"""Rule-based query filters: length bounds, context-dependent wording, exact and near duplicates.

Context-dependent queries only make sense next to their page ("this figure", "the table above", "in this
document", "what is shown here"); a retriever cannot learn from them, since a searcher never types them.
:data:`CONTEXT_PATTERNS` is the documented list (docs/QUERIES.md), matched case-insensitively.

Duplicates are found on normalised text (NFKC, case-folded, punctuation and extra spaces removed) over the whole
input, so the same query twice for one page and the same query for two pages are both caught; the first
occurrence is kept and the reason names the line it duplicates. Near duplicates share the same *content key*:
the set of their words minus :data:`STOPWORDS`, with a trailing plural ``s`` dropped ("What was the revenue in
2020?" and "revenue 2020" are near duplicates). Keys are hashed, so the check is linear in the input.

Languages written without spaces (Chinese, Japanese) count each of their characters as a word
(:func:`word_count`), so the length bounds apply to them too; the context patterns and stopwords are English, and
a query without spaces is its own content key, so for these scripts near duplicates are exact duplicates after
normalisation.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

_ITEM = (r"(figure|fig\.?|table|chart|graph|diagram|image|picture|photo|page|document|slide|section|paragraph|"
         r"text|plot|map|screenshot|illustration|excerpt|passage|article|report|pdf|file|form|list)s?")
CONTEXT_PATTERNS: tuple[tuple[str, str], ...] = (
    ("deictic item", rf"\b(this|these|that|those)\s+{_ITEM}\b"),
    ("item located on the page", rf"\bthe\s+(above|below|following|preceding|previous|attached|given|provided|"
                                 rf"shown|current|accompanying|aforementioned)\s+{_ITEM}\b"),
    ("item followed by a location", rf"\b{_ITEM}\s+(above|below|here|shown)\b"),
    ("shown here", r"\b(shown|depicted|displayed|illustrated|pictured|presented|visible|mentioned|described|"
                   r"listed|given)\s+(here|above|below|on the left|on the right)\b"),
    ("according to the source", rf"\b(according to|based on)\s+the\s+{_ITEM}\b"),
    ("ends on its page", rf"\b(in|on|from)\s+the\s+{_ITEM}\s*[?.!]*\s*$"),
    ("numbered figure or table", r"\b(figure|fig\.|table|chart|exhibit)\s+\d+\b"),
    ("the author", r"\bthe\s+(author|authors|writer)\b"),
)
_COMPILED = tuple((name, re.compile(pattern, re.IGNORECASE)) for name, pattern in CONTEXT_PATTERNS)

STOPWORDS = frozenset("""a an the of in on at to for from by with about as and or is are was were be been being
do does did what which who whom whose when where why how that this these those it its there their they them
i me my we our you your he she his her can could should would will shall may might must has have had not no
any some all each per into than then so such""".split())


# One word per character in scripts written without spaces: CJK ideographs and kana (Korean is written with spaces).
_UNSPACED = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORDS = re.compile(rf"[{_UNSPACED}]|[^\s{_UNSPACED}]+")


def word_count(text: str) -> int:
    """Words of ``text``: runs between spaces, each CJK ideograph or kana counting as one."""
    return len(_WORDS.findall(text))


def normalise(text: str) -> str:
    """Case-folded NFKC text with punctuation removed and spaces collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def content_key(text: str) -> str:
    """The near-duplicate key: sorted distinct content words, trailing plural 's' dropped."""
    words = {w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
             for w in normalise(text).split() if w not in STOPWORDS}
    return " ".join(sorted(words))


def context_reason(query: str) -> str | None:
    """Why the query only makes sense next to its page (the pattern's name and the words), or None."""
    for name, pattern in _COMPILED:
        match = pattern.search(query)
        if match:
            return f"context-dependent ({name}: {match.group(0).strip()!r})"
    return None


@dataclass(frozen=True)
class RuleSettings:
    min_words: int = 3
    max_words: int = 40
    near_duplicates: bool = True


def apply_rules(queries: Sequence[str], pages: Sequence[str], lines: Sequence[int],
                settings: RuleSettings) -> list[str | None]:
    """Per query, the reason it is rejected, or None to keep it (first occurrence of a duplicate is kept)."""
    exact: dict[str, int] = {}
    near: dict[str, int] = {}
    reasons: list[str | None] = []
    for i, query in enumerate(queries):
        words = word_count(query)
        reason = None
        if words < settings.min_words or words > settings.max_words:
            reason = f"length: {words} words, outside [{settings.min_words}, {settings.max_words}]"
        else:
            reason = context_reason(query) or _duplicate(i, query, pages, lines, exact, near, settings)
        reasons.append(reason)
    return reasons


def _duplicate(i: int, query: str, pages: Sequence[str], lines: Sequence[int], exact: dict[str, int],
               near: dict[str, int], settings: RuleSettings) -> str | None:
    """Duplicate reason for query ``i``, or None after registering it as a first occurrence."""
    keys = (("duplicate", exact, normalise(query)),
            ("near duplicate", near, content_key(query) if settings.near_duplicates else ""))
    for kind, table, key in keys:
        if key and key in table:
            first = table[key]
            where = "same page" if pages[first] == pages[i] else f"page {pages[first]}"
            return f"{kind} of line {lines[first]} ({where})"
    for _, table, key in keys:
        if key:
            table[key] = i
    return None
