"""Train/test splits of pairs: ``python -m data_prep.build_splits --pairs a.jsonl b.jsonl --train T --test S``.

No page and no document may be on both sides. Pairs are linked when they share a document (``doc_id``) or any
page (``pos`` or ``neg`` ids); the connected components of that graph (union-find) are the units that are split,
so a leak is impossible by construction. Components are assigned per source (the majority ``source`` of a
component): sorted by their smallest key, shuffled with ``--seed``, then moved to test until the source's test
share reaches ``--test_fraction`` (or ``--test_per_source`` pairs). Same input + same seed = same split. Output
lines keep their input order; per-source counts are printed (and written with ``--report``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from data_prep.errors import InputError, cli
from data_prep.jsonl import iter_jsonl
from data_prep.flags import fraction, non_negative_int
from data_prep.outputs import atomic_output, check_outputs, flag_paths, write_text_atomic


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def read_pairs(paths: list[str | os.PathLike]) -> list[dict[str, Any]]:
    """Read pairs files; clear error naming file and line for bad JSON or missing ``query`` / ``pos``."""
    out = []
    for path in paths:
        for lineno, rec in iter_jsonl(path):
            if not isinstance(rec.get("query"), str) or not rec.get("pos"):
                raise InputError(f"{path}: line {lineno}: a pair needs a 'query' string and a non-empty 'pos'")
            out.append(rec)
    return out


def _keys(rec: dict[str, Any]) -> list[str]:
    keys = [f"page:{p}" for p in [*rec["pos"], *rec.get("neg", [])]]
    if rec.get("doc_id"):
        keys.append(f"doc:{rec['doc_id']}")
    return keys


def split_pairs(pairs: list[dict[str, Any]], test_fraction: float = 0.1, test_per_source: int | None = None,
                seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices of train and test pairs (input order) with no page or document shared between them."""
    uf = _UnionFind()
    for rec in pairs:
        keys = _keys(rec)
        for k in keys[1:]:
            uf.union(keys[0], k)
    members: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(pairs):
        members[uf.find(_keys(rec)[0])].append(i)
    by_source: dict[str, list[str]] = defaultdict(list)
    for root, idx in members.items():
        source = Counter(pairs[i].get("source", "?") for i in idx).most_common(1)[0][0]
        by_source[source].append(root)
    test: set[int] = set()
    rng = random.Random(seed)
    for source in sorted(by_source):
        roots = sorted(by_source[source])
        rng.shuffle(roots)
        total = sum(len(members[r]) for r in roots)
        target = test_per_source if test_per_source is not None else round(test_fraction * total)
        taken = 0
        for root in roots:
            if taken >= target:
                break
            test.update(members[root])
            taken += len(members[root])
    train = [i for i in range(len(pairs)) if i not in test]
    return train, sorted(test)


def _write(path: str | os.PathLike, pairs: list[dict[str, Any]], idx: list[int]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as fh:
        for i in idx:
            fh.write((json.dumps(pairs[i], ensure_ascii=False) + "\n").encode("utf-8"))


def build_splits(paths: list[str | os.PathLike], train_out: str | os.PathLike, test_out: str | os.PathLike,
                 test_fraction: float = 0.1, test_per_source: int | None = None, seed: int = 0) -> dict[str, dict]:
    """Write both splits; returns ``{source: {"train": n, "test": n}}`` (plus ``"total"``)."""
    if not 0.0 <= test_fraction <= 1.0:
        raise InputError(f"--test_fraction must be in [0, 1], got {test_fraction}")
    pairs = read_pairs(paths)
    train, test = split_pairs(pairs, test_fraction, test_per_source, seed)
    if not train:
        raise InputError(f"no train pairs: all {len(pairs)} pairs of {', '.join(map(str, paths))} went to the test "
                         "split (pairs sharing a document or a page stay together); nothing to train on: lower "
                         "--test_fraction or --test_per_source, or give more pairs")
    _write(train_out, pairs, train)
    _write(test_out, pairs, test)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"train": 0, "test": 0})
    for name, idx in (("train", train), ("test", test)):
        for i in idx:
            counts[pairs[i].get("source", "?")][name] += 1
            counts["total"][name] += 1
    print(f"{'source':<20}{'train':>10}{'test':>10}")
    for source in sorted(k for k in counts if k != "total") + ["total"]:
        print(f"{source:<20}{counts[source]['train']:>10}{counts[source]['test']:>10}")
    return dict(counts)


@cli
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m data_prep.build_splits", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", nargs="+", required=True, help="pairs JSONL files (query, pos, neg, source, doc_id)")
    ap.add_argument("--train", required=True, help="output train JSONL")
    ap.add_argument("--test", required=True, help="output test JSONL")
    ap.add_argument("--test_fraction", type=fraction, default=0.1, help="share of each source's pairs in test")
    ap.add_argument("--test_per_source", type=non_negative_int,
                    help="instead of a fraction: about N test pairs per source")
    ap.add_argument("--seed", type=int, default=0, help="shuffling seed (same seed, same split)")
    ap.add_argument("--report", help="also write the per-source counts as JSON here")
    args = ap.parse_args(argv)
    check_outputs({"--train": args.train, "--test": args.test, "--report": args.report},
                  flag_paths("--pairs", args.pairs))
    counts = build_splits(args.pairs, args.train, args.test, args.test_fraction, args.test_per_source, args.seed)
    if args.report:
        write_text_atomic(args.report, json.dumps(counts, indent=1) + "\n")


if __name__ == "__main__":
    main()
