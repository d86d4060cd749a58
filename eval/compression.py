"""Index size against quality in one run: ``eval.retrieval --compare SPEC`` scores every index configuration of SPEC
on one encoding of a task (:mod:`retriever.index`).

SPEC is a JSON or YAML list of configurations written with the index flags' names (``pool_factor``,
``pool_renormalize``, ``quantize``, ``candidates``, ``rerank_depth``, ``muvera_k_sim`` / ``muvera_dim_proj`` /
``muvera_r_reps`` / ``muvera_seed``), ``dim`` (a Matryoshka size: the first ``dim`` coordinates of every query and
page vector, re-normalised, as ``--dim``) and an optional ``name``; exact MaxSim is always scored first, as the
baseline. Queries and pages are encoded once (the first, exact pass); truncated and pooled vectors are computed once
per setting.

Per task it writes ``OUT/<task>/compression.json`` (one record per configuration: the configuration, ``bytes_per_page``
(mean bytes of the page's stored vectors, plus its candidate encoding in a two-stage search), ``index_bytes``,
``scanned_bytes_per_query`` (the first stage reads every page, the rerank ``rerank_depth`` pages),
``ndcg_at_5``, ``ndcg_at_10``, ``recall_at_100``, ``top10_overlap`` with exact MaxSim (mean fraction of each query's
exact top 10 that the configuration's top 10 keeps), ``query_ms`` on this machine), ``compression.md`` and
``compression.png`` (nDCG@10 against bytes per page). Single process only.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from data_prep.errors import InputError
from data_prep.outputs import write_text_atomic
from eval.datasets import RetrievalData
from eval.engine import Encoder, ScoringSettings
from eval.evaluate import evaluate_subsets
from eval.trec import Run
from retriever.index import IndexSettings
from retriever.index.pooling import pool_pages
from retriever.index.scorer import page_bytes
from retriever.process_group import RankInfo

__all__ = ["CachedEncoder", "compare_task", "read_spec"]

METRICS = ("ndcg_at_5", "ndcg_at_10", "recall_at_100")


@dataclass(frozen=True)
class Config:
    """One configuration of a SPEC: its name, index settings and Matryoshka size (None: the full vectors)."""

    name: str
    settings: IndexSettings
    dim: int | None = None


def read_spec(path: Path) -> list[Config]:
    """Each configuration of a SPEC file, exact MaxSim first."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else _yaml(text)
    except (OSError, ValueError) as err:
        raise InputError(f"--compare {path}: cannot read it ({err})") from err
    if not isinstance(data, list) or not data or not all(isinstance(c, dict) for c in data):
        raise InputError(f"--compare {path}: expected a non-empty list of configurations (mappings of index flags)")
    configs = [Config("exact", IndexSettings())]
    for i, entry in enumerate(data):
        where = f"--compare {path}: configuration {i + 1}"
        dim = entry.get("dim")
        if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim < 1):
            raise InputError(f"{where}: dim must be a positive integer, got {dim!r}")
        settings = IndexSettings.from_dict({k: v for k, v in entry.items() if k != "dim"}, where)
        label = settings.describe() if dim is None else f"dim {dim}" + ("" if settings.exact else
                                                                       f", {settings.describe()}")
        config = Config(str(entry.get("name") or label), settings, dim)
        if all(c.name != config.name and (c.settings, c.dim) != (settings, dim) for c in configs):
            configs.append(config)
    return configs


def _yaml(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(str(err).splitlines()[0]) from err


class CachedEncoder:
    """An encoder that encodes each query text and page id once and then serves the stored embeddings; after
    :meth:`use_view`, truncated (Matryoshka) and pooled ones instead (computed once per setting)."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.multi_vector = encoder.multi_vector
        self.fingerprint = encoder.fingerprint
        self.queries: dict[str, Tensor] = {}
        self.pages: dict[str, Tensor] = {}
        self._views: dict[tuple[int | None, int, bool], dict[str, Tensor]] = {}
        self.view: dict[str, Tensor] | None = None
        self.dim: int | None = None

    def encode_queries(self, texts: Sequence[str], batch_size: int, progress: bool) -> list[Tensor]:
        missing = [t for t in dict.fromkeys(texts) if t not in self.queries]
        if missing:
            self.queries.update(zip(missing, self.encoder.encode_queries(missing, batch_size=batch_size,
                                                                         progress=progress)))
        return [_truncated(self.queries[t], self.dim) for t in texts]

    def encode_pages(self, images: Sequence[Image.Image], batch_size: int, ids: Sequence[str] | None,
                     progress: bool) -> list[Tensor]:
        missing = [(i, image) for i, image in zip(ids, images) if i not in self.pages]
        if missing:
            embs = self.encoder.encode_pages([m[1] for m in missing], batch_size=batch_size,
                                             ids=[m[0] for m in missing], progress=progress)
            self.pages.update(zip([m[0] for m in missing], embs))
        source = self.pages if self.view is None else self.view
        return [source[i] for i in ids]

    def use_view(self, dim: int | None = None, factor: int = 1, renormalize: bool = True) -> dict[str, Tensor]:
        """Serve queries and pages truncated to ``dim`` and pages pooled with ``factor`` from now on (the defaults:
        the encoded vectors); returns the pages by id."""
        full = next(iter(self.pages.values())).shape[-1]
        if dim is not None and dim > full:
            raise InputError(f"--compare: dim {dim} is larger than the model's vectors ({full})")
        self.dim = dim
        key = (dim, factor, renormalize)
        if key == (None, 1, True):
            self.view = None
            return self.pages
        if key not in self._views:
            ids = list(self.pages)
            pages = [_truncated(self.pages[i], dim) for i in ids]
            self._views[key] = dict(zip(ids, pool_pages(pages, factor, renormalize) if factor > 1 else pages))
        self.view = self._views[key]
        return self.view


def _truncated(emb: Tensor, dim: int | None) -> Tensor:
    """The first ``dim`` coordinates of every vector, re-normalised (``--dim``); ``emb`` itself without ``dim``."""
    return emb if dim is None else torch.nn.functional.normalize(emb[..., :dim], dim=-1)


@dataclass
class Measured:
    config: Config
    run: Run
    metrics: dict[str, float]
    query_ms: float
    bytes: dict[str, float]


def compare_task(encoder: CachedEncoder, subsets: dict[str, RetrievalData], configs: list[Config],
                 k_values: Sequence[int], depth: int, settings: ScoringSettings, out: Path) -> list[dict[str, Any]]:
    """Scores every configuration on ``subsets`` and writes the task's compression.json / .md / .png to ``out``."""
    info = RankInfo.current()
    if info.world > 1:
        raise InputError("--compare runs in a single process (launch it without torchrun)")
    k_values = sorted(set(k_values) | {5, 10, 100})
    evaluate_subsets(encoder, subsets, info, k_values, depth, settings)  # encodes queries and pages once
    results = [_measure(encoder, subsets, config, k_values, depth, settings) for config in configs]
    records = [_record(r, results[0]) for r in results]
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "compression.json", json.dumps(records, indent=2) + "\n")
    write_text_atomic(out / "compression.md", _table(records))
    _plot(records, out / "compression.png")
    return records


def _measure(encoder: CachedEncoder, subsets: dict[str, RetrievalData], config: Config, k_values: Sequence[int],
             depth: int, settings: ScoringSettings) -> Measured:
    index = config.settings
    pages = encoder.use_view(config.dim, index.pool_factor, index.pool_renormalize)
    scoring = replace(settings, state_dir=None, index=replace(index, pool_factor=1))
    queries = sum(len(d.qrels) for d in subsets.values())
    start = time.perf_counter()
    run, metrics = evaluate_subsets(encoder, subsets, RankInfo.current(), k_values, depth, scoring)
    elapsed = time.perf_counter() - start
    encoder.use_view()
    aggregate = _average({s: m["aggregate"] for s, m in metrics.items()})
    return Measured(config, run, aggregate, 1000 * elapsed / max(queries, 1), _bytes(pages, index))


def _average(per_subset: dict[str, dict[str, float]]) -> dict[str, float]:
    return {m: sum(agg[m] for agg in per_subset.values()) / len(per_subset) for m in METRICS}


def _bytes(pages: dict[str, Tensor], config: IndexSettings) -> dict[str, float]:
    """Mean stored and first-stage bytes per page, the index's total, and the bytes one query scans."""
    stored = [page_bytes(p, config.quantize, config.muvera) for p in pages.values()]
    first = [page_bytes(p, config.candidates, config.muvera) for p in pages.values()] \
        if config.candidates != "exact" else [0] * len(stored)
    n = len(stored)
    mean_stored = sum(stored) / n
    scanned = sum(first) + min(config.rerank_depth, n) * mean_stored if config.candidates != "exact" else sum(stored)
    return {"bytes_per_page": (sum(stored) + sum(first)) / n, "index_bytes": sum(stored) + sum(first),
            "scanned_bytes_per_query": scanned}


def _top10(run: Run) -> dict[str, set[str]]:
    return {q: set(sorted(docs, key=lambda d: (-docs[d], d))[:10]) for q, docs in run.items()}


def _record(result: Measured, exact: Measured) -> dict[str, Any]:
    mine, reference = _top10(result.run), _top10(exact.run)
    overlap = [len(mine.get(q, set()) & ref) / max(len(ref), 1) for q, ref in reference.items()]
    return {"name": result.config.name, "settings": result.config.settings.to_dict(), "dim": result.config.dim,
            **result.bytes,
            "bytes_ratio": result.bytes["bytes_per_page"] / exact.bytes["bytes_per_page"],
            "scanned_ratio": result.bytes["scanned_bytes_per_query"] / exact.bytes["scanned_bytes_per_query"],
            **result.metrics, "ndcg_at_10_kept": result.metrics["ndcg_at_10"] / exact.metrics["ndcg_at_10"]
            if exact.metrics["ndcg_at_10"] else float("nan"),
            "top10_overlap": sum(overlap) / max(len(overlap), 1), "query_ms": result.query_ms}


TABLE = (("bytes/page", "bytes_per_page", "{:.0f}"), ("bytes", "bytes_ratio", "{:.3f}"),
         ("scanned", "scanned_ratio", "{:.3f}"), ("nDCG@5", "ndcg_at_5", "{:.4f}"), ("nDCG@10", "ndcg_at_10", "{:.4f}"),
         ("R@100", "recall_at_100", "{:.4f}"), ("nDCG@10 kept", "ndcg_at_10_kept", "{:.3f}"),
         ("top-10 overlap", "top10_overlap", "{:.3f}"), ("ms/query", "query_ms", "{:.2f}"))


def _table(records: list[dict[str, Any]]) -> str:
    """One row per configuration; ``bytes`` and ``scanned`` relative to exact MaxSim."""
    lines = ["| configuration | " + " | ".join(t[0] for t in TABLE) + " |", "|---" * (len(TABLE) + 1) + "|"]
    lines += [f"| {r['name']} | " + " | ".join(fmt.format(r[key]) for _, key, fmt in TABLE) + " |" for r in records]
    return "\n".join(lines) + "\n"


def _plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in records:
        ax.scatter(r["bytes_per_page"], r["ndcg_at_10"])
        ax.annotate(r["name"], (r["bytes_per_page"], r["ndcg_at_10"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per page (log)")
    ax.set_ylabel("nDCG@10")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
