"""Several training sources with weights, and the epoch plan that draws batches from them.

Sources come from ``--train_data`` as ``path`` or ``path:weight`` (repeatable), or from one YAML/JSON mixture file::

    sources:                     # or a top-level list
      - {path: docvqa.jsonl, weight: 1.0, name: docvqa}   # name defaults to the file stem
      - {path: slides.jsonl, weight: 0.5}                 # relative paths are relative to the mixture file

A source's **weight** scales how many of its pairs one epoch sees: weight 2 plans the source twice per epoch
(with different shuffles), weight 0.5 half of it; weight 1 everywhere is plain concatenation.

``--mixture_batches homogeneous`` (default) plans each source on its own (``batching.plan_epoch``: the same
no-page-twice and true-negative rules, top-up negatives drawn from the same source) and interleaves the sources'
global batches in a seeded order: every global batch holds one source, so in-batch negatives come from the same
kind of document (harder, and no trivial cross-source negatives), as colpali-engine's sampler and VLM2Vec do.
``mixed`` plans the weighted pairs of all sources together. Both are pure functions of ``(seed, epoch)``, so a
resumed run re-plans the epoch and replays exactly the same batches. With one source of weight 1 the plan is
exactly ``plan_epoch``'s.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from data_prep.errors import InputError, read_text_input
from retriever.pairs import Pair
from retriever.training.batching import PlannedQuery, _generator, corpus_of, plan_epoch

MIXTURE_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Source:
    """One training source: where its pairs are, its name in the log, and its weight."""

    path: str
    name: str
    weight: float = 1.0


def parse_sources(specs: Sequence[str]) -> list[Source]:
    """``--train_data`` values: one mixture file, or ``path[:weight]`` entries."""
    if len(specs) == 1 and specs[0].endswith(MIXTURE_SUFFIXES) and not specs[0].endswith(".jsonl"):
        return _read_mixture(Path(specs[0]))
    return _named([_parse_spec(spec) for spec in specs])


def _parse_spec(spec: str) -> Source:
    path, sep, tail = spec.rpartition(":")
    if sep and path:
        try:
            return _source(path, None, float(tail), spec)
        except ValueError:
            pass  # a ':' that is part of the path
    return _source(spec, None, 1.0, spec)


def _source(path: str, name: str | None, weight: float, where: str) -> Source:
    if not weight > 0 or math.isinf(weight):
        raise InputError(f"{where}: a source weight must be a positive number, got {weight}")
    return Source(path=path, name=name or Path(path).stem, weight=float(weight))


def _read_mixture(path: Path) -> list[Source]:
    import yaml

    text = read_text_input(path, "mixture file")
    try:
        spec = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise InputError(f"{path}: invalid {kind} in the mixture file: {' '.join(str(err).split())}") from None
    entries = spec.get("sources") if isinstance(spec, dict) else spec
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{path}: expected a list of sources (or a 'sources' key holding one)")
    sources = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "path" not in entry:
            raise InputError(f"{path}: source {i} must be a mapping with a 'path' (and optional 'weight', 'name')")
        file = Path(entry["path"])
        file = file if file.is_absolute() else path.parent / file
        sources.append(_source(str(file), entry.get("name"), entry.get("weight", 1.0), f"{path}: source {i}"))
    return _named(sources)


def _named(sources: list[Source]) -> list[Source]:
    """Make names unique (``name``, ``name_2``, ...) so each source has its own loss in the log."""
    seen: dict[str, int] = {}
    unique = []
    for source in sources:
        seen[source.name] = seen.get(source.name, 0) + 1
        count = seen[source.name]
        unique.append(replace(source, name=source.name if count == 1 else f"{source.name}_{count}"))
    return unique


@dataclass
class TrainingData:
    """The pairs of all sources, concatenated, and which source each pair came from."""

    pairs: list[Pair]
    sources: list[Source]
    spans: list[range]

    @classmethod
    def from_parts(cls, sources: list[Source], parts: list[list[Pair]]) -> TrainingData:
        spans, start = [], 0
        for part in parts:
            spans.append(range(start, start + len(part)))
            start += len(part)
        return cls([pair for part in parts for pair in part], sources, spans)

    def source_of(self, pair_index: int) -> int:
        return next(s for s, span in enumerate(self.spans) if pair_index in span)

    def plan_epoch(self, global_batch_size: int, num_negatives: int, seed: int, epoch: int,
                   homogeneous: bool = True) -> list[list[PlannedQuery]]:
        """All global batches of one epoch (module docstring)."""
        if len(self.sources) == 1 and self.sources[0].weight == 1.0:
            return plan_epoch(self.pairs, global_batch_size, num_negatives, seed, epoch, corpus_of(self.pairs))
        if homogeneous:
            return self._homogeneous(global_batch_size, num_negatives, seed, epoch)
        return self._mixed(global_batch_size, num_negatives, seed, epoch)

    def _homogeneous(self, size: int, num_negatives: int, seed: int, epoch: int) -> list[list[PlannedQuery]]:
        batches: list[list[PlannedQuery]] = []
        for s, (source, span) in enumerate(zip(self.sources, self.spans)):
            pairs = self.pairs[span.start:span.stop]
            corpus, repeats = corpus_of(pairs), math.ceil(source.weight)
            planned = [batch for r in range(repeats)
                       for batch in plan_epoch(pairs, size, num_negatives, seed * 1_000_003 + s, epoch * repeats + r,
                                               corpus)]
            keep = round(source.weight * len(planned) / repeats)
            batches += [[replace(q, pair_index=span.start + q.pair_index) for q in batch] for batch in planned[:keep]]
        order = torch.randperm(len(batches), generator=_generator(seed, epoch, len(self.sources))).tolist()
        return [batches[i] for i in order]

    def _mixed(self, size: int, num_negatives: int, seed: int, epoch: int) -> list[list[PlannedQuery]]:
        chosen: list[int] = []
        for s, (source, span) in enumerate(zip(self.sources, self.spans)):
            whole, fraction = divmod(source.weight, 1.0)
            chosen += list(span) * int(whole)
            extra = torch.randperm(len(span), generator=_generator(seed, epoch, s, 1)).tolist()
            chosen += [span.start + i for i in sorted(extra[:round(fraction * len(span))])]
        plan = plan_epoch([self.pairs[i] for i in chosen], size, num_negatives, seed, epoch, corpus_of(self.pairs))
        return [[replace(q, pair_index=chosen[q.pair_index]) for q in batch] for batch in plan]
