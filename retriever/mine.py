"""``python -m retriever.mine``: positive-aware hard negatives for training pairs, mined with a (trained) retriever.

1. Every page of the corpus (all ids of the given page sources, or only the pages the pairs name with
   ``--corpus pairs``) is encoded once; embeddings are cached in ``--cache_dir`` in safetensors shards, so an
   interrupted or repeated run re-encodes only what is missing. Under torchrun each rank encodes every
   ``world``-th shard, then all ranks read the whole cache. The cache records what made it in ``made_with.json``
   (the model's fingerprint: checkpoint identity, dtype, head and the other encoder settings; the page ids;
   ``--shard_size``); a run with another model or corpus warns naming the difference and encodes every page
   again, so it never mines with another model's embeddings.
2. Each rank takes a contiguous slice of the queries, encodes them and finds candidates: dense heads with a FAISS
   inner-product index (exact ``Flat`` by default, any ``--faiss_index`` factory string such as ``IVF4096,Flat``
   for large corpora; on the GPU when faiss has GPUs); multi-vector heads from pooled (mean token) vectors in
   FAISS, the best ``--pool_depth`` reranked with exact MaxSim (``--multi_search exact``: brute-force MaxSim; on
   a GPU with Triton the pages are packed once into pinned bf16 memory and the fused MaxSim kernel scores larger
   query blocks), or through a compressed index (``--candidates muvera|binary|int8`` and/or ``--pool_factor K``:
   the best ``--rerank_depth`` by MUVERA encodings, binary / int8 MaxSim or MaxSim over token-pooled pages, or
   with ``--quantize`` over int8 / binary pages; see ``retriever.index``). Candidates are scored exactly and ranked.
   For an approximate search, the first ``--candidate_recall_sample`` queries of each rank are also searched
   exactly, and the fraction of their exact top candidates the search found is reported.
3. The selection rules (``retriever.mining.selection``: positives and their near duplicates out, the rank window
   ``--range_min``/``--range_max``, ``--relative_margin``, ``--absolute_margin``, ``--max_score``, then
   ``--sampling``) pick up to ``--num_negatives`` ids as the line's ``neg``. Each line also gets ``neg_scores``,
   ``neg_ranks`` (1-based rank in the query's retrieval ranking) and ``pos_score`` (its lowest positive's score);
   other keys are kept. Near duplicates of a positive: same PDF page (``--pages_jsonl``), same rendered bytes,
   optionally a close average hash (``--hash_distance``); see ``retriever.mining.duplicates``.
4. Statistics (candidates removed per rule, queries short of negatives, histograms of positive vs negative
   scores, the candidate search's recall of the exact top) are printed and written to ``OUT.stats.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save as safetensors_bytes
from tqdm import tqdm

from data_prep.errors import cli, read_json_input
from data_prep.flags import non_negative_float, positive_int
from data_prep.outputs import atomic_output, check_outputs, flag_paths, record_settings, settings_changes
from retriever.mining.candidates import rank_candidates
from retriever.mining.duplicates import NearDuplicates, pdf_page_keys
from retriever.index import add_index_arguments, check_index_settings, index_settings
from retriever.mining.search import candidate_recall, find_candidates
from retriever.mining.selection import MiningRules, select_negatives
from retriever.mining.statistics import MiningStats
from retriever.model.identity import ids_digest
from retriever.model.saved import add_model_arguments, checkpoint_inputs, load_encoder_from_args
from retriever.model.tensor_files import load_safetensors
from retriever.page_sources import ImageFolder, PageResolver, StorePages
from retriever.pairs import Pair, read_jsonl_pairs, validate_pairs
from retriever.process_group import RankInfo, barrier, joined_process_group, shard_range

logger = logging.getLogger(__name__)
CACHE_RECORD = "made_with.json"  # what made a cache's embeddings (prepare_cache)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m retriever.mine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--train_data", required=True, help="pairs JSONL to add negatives to")
    parser.add_argument("--out", required=True, help="output pairs JSONL (same lines with 'neg' replaced)")
    parser.add_argument("--page_store", nargs="*", default=[], help="HDF5 page store(s)")
    parser.add_argument("--image_root", default=None, help="folder of images; ids are relative paths")
    parser.add_argument("--corpus", choices=["sources", "pairs"], default="sources",
                        help="search all pages of the page sources, or only pages named by the pairs")
    rules = parser.add_argument_group("selection rules (applied in this order; see retriever/mining/selection.py)")
    rules.add_argument("--num_negatives", type=int, default=8, help="negatives per query (fewer if too few survive)")
    rules.add_argument("--range_min", "--skip_top", dest="range_min", type=int, default=0,
                       help="skip this many best non-positive candidates (likeliest false negatives)")
    rules.add_argument("--range_max", type=int, default=100,
                       help="consider only the first RANGE_MAX non-positive candidates "
                       "(positions range_min..range_max-1)")
    rules.add_argument("--relative_margin", type=float, default=None,
                       help="drop candidates scoring above (1 - margin) x the positive's score (e.g. 0.05)")
    rules.add_argument("--absolute_margin", type=non_negative_float, default=None,
                       help="drop candidates scoring above the positive's score minus this margin")
    rules.add_argument("--max_score", type=float, default=None, help="drop candidates scoring above this value")
    rules.add_argument("--sampling", choices=["top", "random"], default="top",
                       help="take the best survivors, or a seeded random draw among them")
    rules.add_argument("--seed", type=int, default=0, help="seed of --sampling random (per query)")
    dup = parser.add_argument_group("near duplicates of a positive (never mined)")
    dup.add_argument("--pages_jsonl", nargs="*", default=[],
                     help="pages.jsonl file(s): pages with the same source-PDF sha256 and page number are one page")
    dup.add_argument("--same_bytes", action=argparse.BooleanOptionalAction, default=True,
                     help="pages whose encoded image bytes are identical are one page")
    dup.add_argument("--hash_distance", type=_hash_distance, default=-1,
                     help="pages whose 64-bit average hashes differ in at most this many bits are one page "
                     "(-1: off; 4 is a reasonable value)")
    search = parser.add_argument_group("search")
    search.add_argument("--faiss_index", default="Flat", help="FAISS index factory string (dense and pooled vectors)")
    search.add_argument("--multi_search", choices=["pooled", "exact"], default="pooled",
                        help="multi-vector heads: FAISS over pooled vectors then exact MaxSim rerank, or brute-force "
                        "MaxSim over every page")
    search.add_argument("--pool_depth", type=positive_int, default=None,
                        help="candidates taken from the pooled vectors and reranked (default: 4 x search depth)")
    search.add_argument("--candidate_recall_sample", type=int, default=32,
                        help="queries per rank also searched exactly, to report the fraction of the exact top "
                             "candidates an approximate search finds (0: off)")
    add_index_arguments(parser, rerank_depth=None,
                        rerank_help="pages per query the index search passes on to the exact rerank (with "
                                    "--candidates, --pool_factor or --quantize; default: 4 x search depth)")
    parser.add_argument("--batch_size", type=positive_int, default=16, help="encoding batch size")
    parser.add_argument("--cache_dir", default=None, help="page-embedding cache (default: OUT.cache/)")
    parser.add_argument("--shard_size", type=positive_int, default=1024, help="pages per cached embedding shard")
    return parser


def _hash_distance(text: str) -> int:
    """``--hash_distance``: -1 (off) or a number of bits, 0 to 64."""
    wrong = argparse.ArgumentTypeError(f"must be -1 (off) or a number of bits from 0 to 64, got {text!r}")
    try:
        value = int(text)
    except ValueError:
        raise wrong from None
    if not -1 <= value <= 64:
        raise wrong
    return value


def check_paths(args: argparse.Namespace) -> None:
    """Refuse, before anything is written, an output (``--out``, the cache) that is, lies in or contains an input
    (the pairs, the model, a page store, a pages.jsonl), or cannot be written."""
    inputs = {"--train_data": args.train_data, **checkpoint_inputs("--model", args.model),
              **flag_paths("--page_store", args.page_store), **flag_paths("--pages_jsonl", args.pages_jsonl)}
    check_outputs({"--out": args.out, "--cache_dir": _cache_dir(args)}, inputs, directories=("--cache_dir",))


def _cache_dir(args: argparse.Namespace) -> Path:
    return Path(args.cache_dir or f"{args.out}.cache")


def encode_corpus(encoder, resolver: PageResolver, ids: list[str], cache: Path, batch_size: int,
                  shard_size: int, rank: int = 0, world: int = 1) -> list[torch.Tensor]:
    """Page embeddings in ``ids`` order, one tensor per page (``[D]`` dense, ``[L, D]`` multi), cached by shard.

    With ``world > 1`` this rank encodes only the missing shards ``rank, rank + world, ...`` (others are skipped
    and the result is incomplete: read the finished cache afterwards with ``rank=0, world=1``). The cache was
    made ready for this model and corpus by :func:`prepare_cache`."""
    vectors: list[torch.Tensor] = []
    shards = range(0, len(ids), shard_size)
    for shard, start in enumerate(tqdm(shards, desc="encoding pages", unit="shard", disable=rank != 0)):
        path = cache / f"pages-{shard:05d}.safetensors"
        chunk = ids[start:start + shard_size]
        if path.exists():
            stored = load_safetensors(path, "a cached embedding shard", "delete it and run the same command again "
                                      "(only the missing shards are encoded)")
            vectors.extend(stored[str(i)] for i in range(len(chunk)))
            continue
        if shard % world != rank:
            continue
        images = [resolver.get_image(page_id) for page_id in chunk]
        encoded = encoder.encode_pages(images, batch_size=batch_size, ids=chunk)
        encoded = list(encoded) if isinstance(encoded, list) else list(encoded.unbind(0))
        _save_shard(encoded, path)
        vectors.extend(encoded)
    return vectors


def _save_shard(encoded: list[torch.Tensor], path: Path) -> None:
    """One cache shard, all or nothing (a shard cut by a kill or a full disk is never reloaded as embeddings)."""
    with atomic_output(path, "the cache shards written before are intact; free space and run the same command "
                       "again to resume") as handle:
        handle.write(safetensors_bytes({str(i): v.contiguous() for i, v in enumerate(encoded)}))


def cache_settings(encoder, ids: list[str], shard_size: int) -> dict[str, Any]:
    """What decides the cached embeddings: the encoder's fingerprint (checkpoint identity, dtype, head, pooling,
    dimensions, prompts, resolution), the corpus (its ids, in order) and the shard layout."""
    return {**encoder.fingerprint, "page ids": ids_digest(ids), "pages": len(ids), "--shard_size": shard_size}


def prepare_cache(cache: Path, settings: dict[str, Any]) -> None:
    """Rank 0, before any shard is read: shards made with other settings than ``settings`` (or by a version that
    recorded none) are deleted, with a warning naming what changed, and ``settings`` is recorded in
    ``CACHE/made_with.json``; the pages are then encoded again instead of reusing another model's embeddings."""
    cache.mkdir(parents=True, exist_ok=True)
    record = cache / CACHE_RECORD
    shards = sorted(cache.glob("pages-*.safetensors"))
    if shards:
        saved = read_json_input(record, "cache record") if record.exists() else None
        changed = settings_changes(saved, settings) if isinstance(saved, dict) else ["no record of what made it"]
        if changed:
            logger.warning("%s: page embeddings made by another model or corpus than this run's: %s; encoding the "
                           "pages again", cache, ", ".join(changed))
            for shard in shards:
                shard.unlink()
    record_settings(record, settings)


def mine_queries(pairs: list[Pair], first: int, queries, pages, ids: list[str], multi: bool, depth: int,
                 candidates: list[list[int]], rules: MiningRules, duplicates: NearDuplicates,
                 stats: MiningStats) -> list[dict]:
    """Per query: ranked exact candidates -> selection; returns the fields each output line gets."""
    index_of = {page: i for i, page in enumerate(ids)}
    fields = []
    for j, (pair, row) in enumerate(tqdm(list(zip(pairs, candidates)), desc="selecting", unit="query", leave=False)):
        ranked = rank_candidates(queries[j], pages, row, ids, multi)[:depth]
        pos_scores = [c.score for c in rank_candidates(queries[j], pages, [index_of[p] for p in pair.pos], ids, multi)]
        selection = select_negatives(ranked, pair.pos, pos_scores, rules, first + j, duplicates.test_for(pair.pos))
        stats.add(selection)
        fields.append({"neg": [c.page for c in selection.negatives],
                       "neg_scores": [c.score for c in selection.negatives],
                       "neg_ranks": [c.rank for c in selection.negatives], "pos_score": selection.pos_score})
    return fields


def search_depth(rules: MiningRules, pairs: list[Pair], pdf_keys: dict[str, tuple[str, int]]) -> int:
    """How deep to search so the window sees ``range_max`` non-excluded candidates (positives and their
    same-PDF-page copies are known up front; byte and hash duplicates are not, and may shorten the window)."""
    copies: dict[tuple[str, int], int] = {}
    for key in pdf_keys.values():
        copies[key] = copies.get(key, 0) + 1
    largest_group = max(copies.values(), default=1)
    return rules.range_max + max(len(pair.pos) for pair in pairs) * largest_group


@cli
def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    check_paths(args)
    rules = MiningRules(args.num_negatives, args.range_min, args.range_max, args.relative_margin,
                        args.absolute_margin, args.max_score, args.sampling, args.seed)
    with joined_process_group(timedelta(minutes=30)) as env:
        mine(args, rules, env)


def mine(args: argparse.Namespace, rules: MiningRules, env: RankInfo) -> None:
    """Steps 1-4 of the module docstring on this rank; rank 0 then merges the ranks' parts into OUT."""
    sources = [StorePages(path) for path in args.page_store]
    sources += [ImageFolder(args.image_root)] if args.image_root else []
    resolver = PageResolver(sources)
    pairs = read_jsonl_pairs(args.train_data)
    validate_pairs(pairs, resolver, args.train_data)
    if args.corpus == "pairs":
        ids = list(dict.fromkeys(page for pair in pairs for page in pair.pos + pair.neg))
    else:
        ids = list(dict.fromkeys(page for source in sources for page in source.ids()))
    encoder = load_encoder_from_args(args, env.device if env.device.type == "cuda" else None)
    pages = load_corpus(encoder, resolver, ids, _cache_dir(args), args, env)
    pdf_keys = pdf_page_keys(args.pages_jsonl)
    depth = search_depth(rules, pairs, pdf_keys)
    part = shard_range(len(pairs), env.rank, env.world)
    mine_pairs = [pairs[i] for i in part]
    queries = (encoder.encode_queries([pair.query for pair in mine_pairs], batch_size=args.batch_size,
                                      progress=env.is_main) if mine_pairs else [])
    pages = pages if encoder.multi_vector else torch.stack(pages)
    index = index_settings(args, rerank_depth=4 * depth)
    check_index_settings(index, multi_vector=encoder.multi_vector, depth=depth, model=args.model)
    candidates = find_candidates(queries, pages, encoder.multi_vector, depth, args.multi_search, args.pool_depth,
                                 args.faiss_index, index)
    duplicates = NearDuplicates(resolver, pdf_keys, args.same_bytes, args.hash_distance)
    stats = MiningStats(rules.num_negatives)
    approximate = encoder.multi_vector and (not index.exact or args.multi_search == "pooled")
    if approximate and args.candidate_recall_sample > 0 and mine_pairs:
        sample = min(args.candidate_recall_sample, len(mine_pairs))
        stats.recall_depth = depth
        stats.candidate_recall = candidate_recall(list(queries[:sample]), pages, candidates[:sample], depth)
    fields = mine_queries(mine_pairs, part.start, queries, pages, ids, encoder.multi_vector, depth, candidates,
                          rules, duplicates, stats)
    write_part(Path(args.out), env, part, fields, stats, Path(args.train_data))
    barrier()
    if env.is_main:
        merge_parts(Path(args.out), env.world, rules.num_negatives)


def load_corpus(encoder, resolver: PageResolver, ids: list[str], cache: Path, args,
                env: RankInfo) -> list[torch.Tensor]:
    """All page embeddings: the ranks encode the missing cache shards between them, then each reads the cache."""
    if env.is_main:
        prepare_cache(cache, cache_settings(encoder, ids, args.shard_size))
    barrier()
    vectors = encode_corpus(encoder, resolver, ids, cache, args.batch_size, args.shard_size, env.rank, env.world)
    if env.world == 1:
        return vectors
    barrier()
    return encode_corpus(encoder, resolver, ids, cache, args.batch_size, args.shard_size)


def _part_path(out: Path, rank: int, world: int) -> Path:
    return out.with_name(f"{out.name}.part-{rank:05d}-of-{world:05d}")


def _stats_path(part: Path) -> Path:
    return part.with_name(part.name + ".stats")


def write_part(out: Path, env: RankInfo, part: range, fields: list[dict], stats: MiningStats,
               train_data: Path) -> None:
    """This rank's slice of the output lines (input lines with the mined fields) and its raw statistics."""
    lines = [json.loads(line) for line in train_data.read_text(encoding="utf-8").splitlines() if line.strip()]
    path = _part_path(out, env.rank, env.world)
    with path.open("w", encoding="utf-8") as handle:
        for line, mined in zip(lines[part.start:part.stop], fields):
            handle.write(json.dumps({**line, **mined}, ensure_ascii=False) + "\n")
    _stats_path(path).write_text(json.dumps(stats.raw()))


def merge_parts(out: Path, world: int, num_negatives: int) -> None:
    """Rank 0: the parts in rank order become OUT (atomically), their statistics OUT.stats.json; the parts are
    removed only once OUT is complete."""
    parts = [_part_path(out, rank, world) for rank in range(world)]
    with atomic_output(out, "the per-rank parts are intact; free space and run the same command again") as handle:
        for path in parts:
            handle.write(path.read_bytes())
    raw = [json.loads(_stats_path(path).read_text()) for path in parts]
    for path in parts:
        path.unlink()
        _stats_path(path).unlink()
    stats = MiningStats.from_json_parts(num_negatives, raw)
    out.with_name(out.name + ".stats.json").write_text(json.dumps(stats.to_json(), indent=2) + "\n")
    print(stats.report())
    print(f"wrote {stats.queries} pairs with up to {num_negatives} mined negatives each to {out}")


if __name__ == "__main__":
    main()
