"""``python -m query_generation.filter``: from generated queries (or any pairs) to training pairs.

Stages, each optional, in this order; a stage sees only the queries the previous ones kept:

1. ``--rules``: length bounds, context-dependent wording (a documented pattern list), exact and near duplicates
   per page and across the corpus (:mod:`query_generation.query_rules`);
2. ``--judge_model M --judge_backend B``: few-shot LLM classification, self-contained vs context-dependent
   (:mod:`query_generation.judge`), through the same backends as generation;
3. ``--retriever CKPT --store STORE --top_k K``: keep a query only if the retriever ranks its page in the top K
   of the store (:mod:`query_generation.consistency`).

Input: the queries JSONL of ``query_generation.generate`` (one query per line, with ``page_id``), or pairs
(``query``, ``pos``, ... as written by ``data_prep.academic`` or ``from_text``). Output: pairs in the trainer's
format (``query``, ``pos``, ``neg``, ``source``, ``doc_id``, and the provenance fields ``kind``, ``backend``,
``model``, ``prompt``, ``seed``, ``page_id`` of generated queries); every dropped query goes to ``--rejected``
with its input ``line``, the ``stage`` and the ``reason``. A table of counts per stage is printed;
kept + rejected = input, always. Both outputs are written atomically (a full disk leaves their previous
versions); bad input (a line that is neither a query nor a pair, a judge prompt without its slot, contradicting
flags) stops the run with one ``error:`` line and exit status 2 (docs/ERRORS.md).
"""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from data_prep.errors import InputError, cli
from data_prep.jsonl import iter_jsonl
from data_prep.flags import positive_int
from data_prep.outputs import check_outputs, write_text_atomic
from data_prep.store import PageStore
from query_generation.generator_args import add_generator_arguments, generator_options
from query_generation.generators import GENERATORS, make_generator
from query_generation.prompt import DEFAULT_JUDGE_PROMPT, JUDGE_SLOTS, PromptFile
from query_generation.provenance import local_model
from query_generation.query_rules import RuleSettings, apply_rules

PROVENANCE = ("kind", "backend", "model", "prompt", "seed", "page_id")
GENERATED_SOURCE = "vlm_generated"


def to_pair(record: dict[str, Any], where: str) -> dict[str, Any]:
    """A generated query (``page_id``) or a pair (``pos``) in the trainer's pair format."""
    if not isinstance(record.get("query"), str):
        raise InputError(f"{where}: no 'query' string (--queries takes the output of "
                         "query_generation.generate, or pairs)")
    if "page_id" in record:
        pair = {"query": record["query"], "pos": [record["page_id"]], "neg": [], "source": GENERATED_SOURCE,
                "doc_id": record.get("doc_id")}
        return pair | {key: record[key] for key in PROVENANCE if key in record}
    if isinstance(record.get("pos"), list) and record["pos"]:
        return {"neg": [], **record}
    raise InputError(f"{where}: neither a generated query ('page_id') nor a pair (non-empty 'pos'); --queries "
                     "takes the output of query_generation.generate, or pairs")


def read_candidates(path: str | os.PathLike) -> list[tuple[int, dict[str, Any]]]:
    return [(number, to_pair(record, f"{path}: line {number}")) for number, record in iter_jsonl(path)]


Stage = tuple[str, Callable[[list[tuple[int, dict[str, Any]]]], list[str | None]]]


def rules_stage(args: argparse.Namespace) -> Stage:
    settings = RuleSettings(args.min_words, args.max_words, not args.no_near_duplicates)

    def run(items: list[tuple[int, dict[str, Any]]]) -> list[str | None]:
        return apply_rules([p["query"] for _, p in items], [p["pos"][0] for _, p in items],
                           [n for n, _ in items], settings)

    return "rules", run


def judge_stage(args: argparse.Namespace) -> Stage:
    from query_generation.judge import judge_reasons

    prompt = PromptFile.load(args.judge_prompt or DEFAULT_JUDGE_PROMPT, JUDGE_SLOTS)

    def run(items: list[tuple[int, dict[str, Any]]]) -> list[str | None]:
        if not items:
            return []
        backend = make_generator(args.judge_backend, args.judge_model, generator_options(args, "judge_"))
        try:
            return judge_reasons(backend, prompt, [p["query"] for _, p in items], [f"line {n}" for n, _ in items],
                                 args.judge_batch_size)
        finally:
            backend.close()

    return "judge", run


def retrieval_stage(args: argparse.Namespace) -> Stage:
    from query_generation.consistency import consistency_reasons, load_retriever

    store = PageStore(args.store)

    def run(items: list[tuple[int, dict[str, Any]]]) -> list[str | None]:
        if not items:
            return []
        encoder = load_retriever(args.retriever, args.trust_remote_code)
        return consistency_reasons(encoder, store, [p["query"] for _, p in items], [p["pos"] for _, p in items],
                                   args.top_k, args.retriever_batch_size, args.chunk_pages)

    return "retrieval", run


def stages_for(args: argparse.Namespace) -> list[Stage]:
    stages = [rules_stage(args)] if args.rules else []
    if args.judge_model:
        stages.append(judge_stage(args))
    if args.retriever:
        stages.append(retrieval_stage(args))
    return stages


def write_jsonl(path: str | os.PathLike, records: Sequence[dict[str, Any]]) -> None:
    """Write all or nothing (tmp file, fsync, rename; a full disk leaves the previous version)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def run_stages(items: list[tuple[int, dict[str, Any]]], stages: Sequence[Stage]
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[tuple[str, int, int]]]:
    """``(kept pairs, rejected records, [(stage, in, kept)])``; rejected in stage order, then input order."""
    rejected, table = [], []
    for name, run in stages:
        reasons = run(items)
        survivors = []
        for (number, pair), reason in zip(items, reasons, strict=True):
            if reason is None:
                survivors.append((number, pair))
            else:
                rejected.append({**pair, "line": number, "stage": name, "reason": reason})
        table.append((name, len(items), len(survivors)))
        items = survivors
    return [pair for _, pair in items], rejected, table


def print_table(total: int, kept: int, table: Sequence[tuple[str, int, int]]) -> None:
    print(f"{'stage':<12}{'in':>9}{'kept':>9}{'rejected':>10}")
    for name, n_in, n_kept in table:
        print(f"{name:<12}{n_in:>9}{n_kept:>9}{n_in - n_kept:>10}")
    print(f"{'total':<12}{total:>9}{kept:>9}{total - kept:>10}")


def check_args(args: argparse.Namespace) -> None:
    """Refuse flags that cannot work together and outputs that would overwrite an input (``--out`` on the queries
    journal of generate, say), before anything is read or loaded."""
    if args.retriever and not args.store:
        raise InputError("--retriever needs --store (the page store the retriever searches)")
    if args.min_words > args.max_words:
        raise InputError(f"--min_words {args.min_words} is more than --max_words {args.max_words}: no query could "
                         "be kept")
    check_outputs({"--out": args.out, "--rejected": args.rejected},
                  {"--queries": args.queries, "--judge_prompt": args.judge_prompt, "--store": args.store,
                   "--retriever": args.retriever, "--judge_model": local_model(args.judge_model)})


def filter_queries(args: argparse.Namespace) -> dict[str, int]:
    check_args(args)
    items = read_candidates(args.queries)
    kept, rejected, table = run_stages(items, stages_for(args))
    if len(kept) + len(rejected) != len(items):
        raise RuntimeError(f"accounting error: {len(kept)} kept + {len(rejected)} rejected != {len(items)} input")
    write_jsonl(args.rejected, rejected)
    write_jsonl(args.out, kept)
    print_table(len(items), len(kept), table)
    print(f"filter: {len(items)} input = {len(kept)} kept ({args.out}) + {len(rejected)} rejected ({args.rejected})")
    return {"input": len(items), "kept": len(kept), "rejected": len(rejected)}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m query_generation.filter", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    io = ap.add_argument_group("input and output")
    io.add_argument("--queries", required=True, help="queries JSONL of query_generation.generate, or pairs JSONL")
    io.add_argument("--out", required=True, help="kept pairs JSONL (trainer format)")
    io.add_argument("--rejected", required=True, help="rejected queries JSONL (with line, stage, reason)")
    rules = ap.add_argument_group("stage 1: rules")
    rules.add_argument("--rules", action="store_true", help="apply the rule filters")
    rules.add_argument("--min_words", type=positive_int, default=3,
                       help="shortest query kept, in words (default 3)")
    rules.add_argument("--max_words", type=positive_int, default=40,
                       help="longest query kept, in words (default 40)")
    rules.add_argument("--no_near_duplicates", action="store_true",
                       help="drop exact duplicates only, not queries with the same content words")
    judge = ap.add_argument_group("stage 2: LLM judge")
    judge.add_argument("--judge_model", help="model of the judge (enables the stage)")
    judge.add_argument("--judge_backend", choices=GENERATORS, default="vllm", help="judge backend (default vllm)")
    judge.add_argument("--judge_prompt", help=f"few-shot prompt file with a {{query}} slot "
                       f"(default: the packaged {DEFAULT_JUDGE_PROMPT.name})")
    judge.add_argument("--judge_batch_size", type=positive_int, default=64,
                       help="queries per judge batch (default 64)")
    add_generator_arguments(ap, "judge_")
    retrieval = ap.add_argument_group("stage 3: retrieval consistency")
    retrieval.add_argument("--retriever", help="retriever checkpoint directory (enables the stage)")
    retrieval.add_argument("--store", help="page store: the corpus the retriever searches")
    retrieval.add_argument("--trust_remote_code", action="store_true",
                           help="run Python code shipped with the retriever checkpoint (MiniCPM-V); the judge's "
                           "is --judge_trust_remote_code")
    retrieval.add_argument("--top_k", type=positive_int, default=10,
                           help="keep when a positive page ranks in the top K (default 10)")
    retrieval.add_argument("--retriever_batch_size", type=positive_int, default=8,
                           help="encoding batch size (default 8)")
    retrieval.add_argument("--chunk_pages", type=positive_int, default=256,
                           help="pages encoded and scored per chunk (default 256)")
    return ap


@cli
def main(argv: Sequence[str] | None = None) -> None:
    filter_queries(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
