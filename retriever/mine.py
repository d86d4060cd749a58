"""``python -m retriever.mine``: hard negatives for training pairs, mined with a (trained) retriever.

1. Every page of the corpus (all ids of the given page sources, or only the pages the pairs name with
   ``--corpus pairs``) is encoded once; embeddings are cached in ``--cache_dir`` in safetensors shards, so an
   interrupted or repeated run re-encodes only what is missing.
2. Queries are encoded and searched: dense heads with a FAISS inner-product index (exact ``Flat`` by default, any
   ``--faiss_index`` factory string such as ``IVF4096,Flat`` for large corpora; on the GPU when faiss has GPUs),
   multi-vector heads with blocked MaxSim over query blocks (no full score matrix); on a GPU with Triton, the
   pages are packed once into pinned bf16 memory and the fused MaxSim kernel scores larger query blocks.
3. For each query, the top results minus its positives, after skipping the ``--skip_top`` best ones (they are the
   likeliest false negatives), become its ``neg`` list (``--num_negatives`` ids). Other keys of the line are kept.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from data_prep.errors import cli, stop_on_full_disk
from retriever.model.embeddings import pad_multivector
from retriever.model.saved import add_model_arguments, load_encoder_from_args
from retriever.model.scoring import fused_maxsim_available, maxsim_lists
from retriever.pages import ImageFolder, PageResolver, StorePages
from retriever.pairs import read_jsonl_pairs, validate_pairs


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
    parser.add_argument("--num_negatives", type=int, default=8)
    parser.add_argument("--skip_top", type=int, default=0, help="skip this many top non-positive results")
    parser.add_argument("--faiss_index", default="Flat", help="FAISS index factory string (dense heads)")
    parser.add_argument("--batch_size", type=int, default=16, help="encoding batch size")
    parser.add_argument("--cache_dir", default=None, help="page-embedding cache (default: OUT.cache/)")
    parser.add_argument("--shard_size", type=int, default=1024, help="pages per cached embedding shard")
    return parser


def encode_corpus(encoder, resolver: PageResolver, ids: list[str], cache: Path, batch_size: int,
                  shard_size: int) -> list[torch.Tensor]:
    """Page embeddings in ``ids`` order, one tensor per page (``[D]`` dense, ``[L, D]`` multi), cached by shard."""
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "ids.json").write_text(json.dumps(ids))
    vectors: list[torch.Tensor] = []
    shards = range(0, len(ids), shard_size)
    for shard, start in enumerate(tqdm(shards, desc="encoding pages", unit="shard")):
        path = cache / f"pages-{shard:05d}.safetensors"
        chunk = ids[start:start + shard_size]
        if path.exists():
            stored = load_file(str(path))
            vectors.extend(stored[str(i)] for i in range(len(chunk)))
            continue
        images = [resolver.get_image(page_id) for page_id in chunk]
        encoded = encoder.encode_pages(images, batch_size=batch_size, ids=chunk)
        encoded = list(encoded) if isinstance(encoded, list) else list(encoded.unbind(0))
        _save_shard(encoded, path)
        vectors.extend(encoded)
    return vectors


def _save_shard(encoded: list[torch.Tensor], path: Path) -> None:
    """One cache shard, all or nothing (a shard cut by a full disk is never reloaded as embeddings)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with stop_on_full_disk(path, "the cache shards written before are intact; free space and run the same "
                               "command again to resume"):
            save_file({str(i): v.contiguous() for i, v in enumerate(encoded)}, str(tmp))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def search_dense(queries: torch.Tensor, pages: torch.Tensor, k: int, index_spec: str) -> torch.Tensor:
    """Top-``k`` page indices per query by inner product with FAISS."""
    import faiss

    data = pages.float().numpy()
    index = faiss.index_factory(data.shape[1], index_spec, faiss.METRIC_INNER_PRODUCT)
    if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    if not index.is_trained:
        index.train(data)
    index.add(data)
    _, found = index.search(queries.float().numpy(), min(k, len(data)))
    return torch.from_numpy(found)


def _multi_scorer(pages: list[torch.Tensor], block: int) -> tuple[Callable[[list[torch.Tensor]], torch.Tensor], int]:
    """MaxSim ``(query block) -> [n, N]`` and the query block size to use (``16 * block`` on a GPU).

    On a GPU with Triton the pages are packed once into pinned bf16 memory and uploaded per block (never
    re-packed); elsewhere the CPU path pads them per call.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not fused_maxsim_available(device):
        return (lambda part: maxsim_lists(pad_multivector(part), pages)), block
    from retriever.model.maxsim_triton import PackedPages, maxsim_packed

    packed = PackedPages.pack(pages, torch.bfloat16, pin=True)
    return (lambda part: maxsim_packed(part, packed, torch.bfloat16, device)), 16 * block


def search_multi(queries: list[torch.Tensor], pages: list[torch.Tensor], k: int, block: int = 256) -> torch.Tensor:
    """Top-``k`` page indices per query by MaxSim, query block by query block."""
    score, block = _multi_scorer(pages, block)
    found = []
    for start in tqdm(range(0, len(queries), block), desc="MaxSim search", unit="block", leave=False):
        found.append(score(queries[start:start + block]).topk(min(k, len(pages)), dim=1).indices.cpu())
    return torch.cat(found)


def choose_negatives(ranked: list[str], positives: Sequence[str], num_negatives: int, skip_top: int) -> list[str]:
    """The ranked ids minus positives, after skipping the ``skip_top`` best, cut to ``num_negatives``."""
    candidates = [page for page in ranked if page not in set(positives)]
    return candidates[skip_top:skip_top + num_negatives]


@cli
def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    sources = [StorePages(path) for path in args.page_store] + ([ImageFolder(args.image_root)] if args.image_root else [])
    resolver = PageResolver(sources)
    pairs = read_jsonl_pairs(args.train_data)
    validate_pairs(pairs, resolver, args.train_data)
    if args.corpus == "pairs":
        ids = list(dict.fromkeys(page for pair in pairs for page in pair.pos + pair.neg))
    else:
        ids = list(dict.fromkeys(page for source in sources for page in source.ids()))
    encoder = load_encoder_from_args(args, "cuda" if torch.cuda.is_available() else None)
    cache = Path(args.cache_dir or f"{args.out}.cache")
    pages = encode_corpus(encoder, resolver, ids, cache, args.batch_size, args.shard_size)
    queries = encoder.encode_queries([pair.query for pair in pairs], batch_size=args.batch_size, progress=True)
    depth = args.num_negatives + args.skip_top + max(len(pair.pos) for pair in pairs)
    if encoder.multi_vector:
        found = search_multi(queries, pages, depth)
    else:
        found = search_dense(queries, torch.stack(pages), depth, args.faiss_index)
    lines = [json.loads(line) for line in Path(args.train_data).read_text(encoding="utf-8").splitlines() if line.strip()]
    out = Path(args.out)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for line, pair, row in zip(lines, pairs, found.tolist()):
            ranked = [ids[i] for i in row if i >= 0]
            line["neg"] = choose_negatives(ranked, pair.pos, args.num_negatives, args.skip_top)
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    tmp.replace(out)
    print(f"wrote {len(lines)} pairs with up to {args.num_negatives} mined negatives each to {out}")


if __name__ == "__main__":
    main()
