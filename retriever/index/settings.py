"""How a multi-vector page index is compressed and searched: one :class:`IndexSettings`, one spelling of its flags.

* ``pool_factor`` K: hierarchical token pooling of each page's vectors to at most ``len // K`` (1: none), the pooled
  vectors renormalised unless ``pool_renormalize`` is off (:mod:`retriever.index.pooling`);
* ``quantize`` {none,int8,binary}: how stored page vectors are scored (:mod:`retriever.index.quantization`): float
  MaxSim, int8 codes with one scale per vector, or sign bits with Hamming MaxSim (queries quantized the same way);
* ``candidates`` {exact,muvera,binary,int8} with ``rerank_depth`` N: a first stage ranks every page (MUVERA fixed
  dimensional encodings, :mod:`retriever.index.muvera`, or binary / int8 MaxSim) and only its top N per query are
  scored by the stored representation (``quantize``); ``exact``: every page is scored by it directly.

Pooling comes first: candidates and stored vectors are built from the pooled page vectors.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from typing import Any

from data_prep.errors import InputError
from data_prep.flags import positive_int

__all__ = ["CANDIDATES", "IndexSettings", "MuveraSettings", "QUANTIZE", "add_index_arguments", "check_index_settings",
           "index_settings"]

QUANTIZE = ("none", "int8", "binary")
CANDIDATES = ("exact", "muvera", "binary", "int8")


@dataclass(frozen=True)
class MuveraSettings:
    """FastEmbed's ``Muvera`` parameters: 2^``k_sim`` SimHash partitions, ``dim_proj`` projected dimensions,
    ``r_reps`` repetitions (the encoding has ``r_reps * 2^k_sim * dim_proj`` dimensions), ``seed``."""

    k_sim: int = 4
    dim_proj: int = 16
    r_reps: int = 10
    seed: int = 0


@dataclass(frozen=True)
class IndexSettings:
    pool_factor: int = 1
    pool_renormalize: bool = True
    quantize: str = "none"
    candidates: str = "exact"
    rerank_depth: int = 100
    muvera: MuveraSettings = field(default_factory=MuveraSettings)

    @property
    def exact(self) -> bool:
        """Whether pages are scored by exact float MaxSim over all their vectors (no option changes anything)."""
        return self.pool_factor == 1 and self.quantize == "none" and self.candidates == "exact"

    def describe(self) -> str:
        """A short label, e.g. ``pool 3, binary top 100 -> int8``."""
        parts = [f"pool {self.pool_factor}" + ("" if self.pool_renormalize else " (not renormalised)")] \
            if self.pool_factor > 1 else []
        stored = "float" if self.quantize == "none" else self.quantize
        if self.candidates != "exact":
            parts.append(f"{self.candidates} top {self.rerank_depth} -> {stored}")
        elif self.quantize != "none" or not parts:
            parts.append(stored)
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> IndexSettings:
        """Settings from a mapping of flag names (``pool_factor``, ``quantize``, ...); ``where`` names the source in
        errors."""
        known = {f for f in cls.__dataclass_fields__ if f != "muvera"} | {f"muvera_{f}" for f in
                                                                          MuveraSettings.__dataclass_fields__}
        unknown = sorted(set(data) - known - {"name"})
        if unknown:
            raise InputError(f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        muvera = MuveraSettings(**{k[len("muvera_"):]: v for k, v in data.items() if k.startswith("muvera_")})
        settings = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__}, muvera=muvera)
        _check_values(settings, where)
        return settings


def _check_values(settings: IndexSettings, where: str) -> None:
    if settings.quantize not in QUANTIZE:
        raise InputError(f"{where}: quantize {settings.quantize!r}; choose from {', '.join(QUANTIZE)}")
    if settings.candidates not in CANDIDATES:
        raise InputError(f"{where}: candidates {settings.candidates!r}; choose from {', '.join(CANDIDATES)}")
    for name in ("pool_factor", "rerank_depth"):
        value = getattr(settings, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{where}: {name} must be a positive integer, got {value!r}")
    m = settings.muvera
    if min(m.k_sim, m.dim_proj, m.r_reps) < 1:
        raise InputError(f"{where}: muvera_k_sim, muvera_dim_proj and muvera_r_reps must be positive")


def add_index_arguments(p: argparse.ArgumentParser, rerank_depth: int | None = 100,
                        rerank_help: str = "pages per query the first stage passes on (with --candidates other than "
                                           "exact)") -> None:
    """The index flags, spelled the same by every tool that takes them (``rerank_depth``: the tool's default)."""
    g = p.add_argument_group("index compression (multi-vector models)")
    g.add_argument("--pool_factor", type=positive_int, default=1,
                   help="hierarchical token pooling: at most len/K vectors per page (1 = none)")
    g.add_argument("--pool_renormalize", action=argparse.BooleanOptionalAction, default=True,
                   help="renormalise pooled vectors to unit length (default: yes)")
    g.add_argument("--quantize", choices=QUANTIZE, default="none",
                   help="stored page vectors: float, int8 (one scale per vector) or sign bits (Hamming MaxSim)")
    g.add_argument("--candidates", choices=CANDIDATES, default="exact",
                   help="first stage: score every page exactly, or take the top --rerank_depth pages of MUVERA, "
                        "binary or int8 scores and rescore only those with the stored vectors")
    g.add_argument("--rerank_depth", type=positive_int, default=rerank_depth, help=rerank_help)


def index_settings(args: argparse.Namespace, rerank_depth: int | None = None) -> IndexSettings:
    """The settings of the index flags (``rerank_depth`` where the tool's flag has no default and was left unset)."""
    return IndexSettings(args.pool_factor, args.pool_renormalize, args.quantize, args.candidates,
                         args.rerank_depth or rerank_depth)


def check_index_settings(settings: IndexSettings, *, multi_vector: bool, depth: int, model: str) -> None:
    """One ``InputError`` naming the flag and the model when the settings cannot apply: any compression of a dense
    model, or a rerank depth below the number of pages kept per query."""
    if settings.exact:
        return
    if not multi_vector:
        flag = next(f for f, on in (("--pool_factor", settings.pool_factor > 1), ("--quantize", settings.quantize !=
                    "none"), ("--candidates", settings.candidates != "exact")) if on)
        raise InputError(f"{flag}: {model} is a dense model (one vector per page); index compression applies to "
                         "multi-vector models")
    if settings.candidates != "exact" and settings.rerank_depth < depth:
        raise InputError(f"--rerank_depth {settings.rerank_depth} is below the {depth} pages kept per query "
                         f"(model {model}): the run would hold fewer pages than its metrics count")
