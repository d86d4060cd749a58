"""CLI: a model's page embeddings, written for a vector engine in the chosen index compression (Parquet shards).

``python -m eval.encode --model RUN/final --page_store STORE --out DIR [--pool_factor 3] [--quantize int8]
[--candidates muvera]`` encodes every page of the sources and writes

* ``DIR/pages-00000.parquet``, ... (``--shard_size`` pages each): one row per page, ``id`` and ``n_vectors``, then
  by ``--quantize``: ``vectors`` (list of float16 vectors), or ``codes`` (list of int8 vectors) and ``scales``
  (float32, one per vector: a vector is ``codes * scale``), or ``bits`` (one binary value of D/8 bytes per vector:
  the packed sign bits, most significant bit first). A dense model writes one float16 ``vectors`` entry per page.
  ``--candidates muvera`` adds ``fde`` (float16), the page's MUVERA encoding;
* ``DIR/index.json``: the model (path and fingerprint), the index settings, the vector dimension and format, the
  shards with their page and vector counts, and the total bytes of the vectors.

Resumable: each shard is written whole (a temporary file renamed into place) and a rerun with the same model and
settings skips the shards already there; with others it refuses to mix them (one error line: use another --out).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor
from tqdm.auto import tqdm

from data_prep.errors import InputError, cli
from data_prep.flags import positive_int
from data_prep.outputs import check_outputs, flag_paths, settings_changes, write_text_atomic
from retriever.index import IndexSettings, add_index_arguments, check_index_settings, index_settings
from retriever.index import muvera
from retriever.index.pooling import pool_pages
from retriever.index.quantization import to_binary, to_int8
from retriever.model.saved import add_model_arguments, checkpoint_inputs, load_encoder_from_args
from retriever.page_sources import ImageFolder, PageResolver, StorePages

__all__ = ["main", "read_shard"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval.encode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--page_store", nargs="*", default=[], help="HDF5 page store(s) whose pages are encoded")
    p.add_argument("--image_root", default=None, help="folder of page images (ids: relative paths)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--shard_size", type=positive_int, default=4096, help="pages per Parquet shard")
    p.add_argument("--batch_size", type=positive_int, default=8, help="encoder batch size")
    add_index_arguments(p)
    args = p.parse_args(argv)
    if not args.page_store and not args.image_root:
        p.error("give the pages: --page_store and/or --image_root")
    if args.candidates not in ("exact", "muvera"):
        p.error(f"--candidates {args.candidates}: binary and int8 candidates are computed from the stored vectors at "
                "search time; the export writes --quantize's vectors (and MUVERA encodings with --candidates muvera)")
    return args


def _sources(args: argparse.Namespace) -> PageResolver:
    return PageResolver([*(StorePages(s) for s in args.page_store),
                         *([ImageFolder(args.image_root)] if args.image_root else [])])


def _columns(pages: list[Tensor], settings: IndexSettings) -> dict[str, pa.Array]:
    """The shard's columns (after ``id``) for these pages (pooled already)."""
    columns: dict[str, Any] = {"n_vectors": pa.array([len(p) for p in pages], pa.int32())}
    if settings.quantize == "int8":
        quantized = [to_int8(p) for p in pages]
        columns["codes"] = pa.array([q.codes.numpy().tolist() for q in quantized], pa.list_(pa.list_(pa.int8())))
        columns["scales"] = pa.array([q.scales.numpy() for q in quantized], pa.list_(pa.float32()))
    elif settings.quantize == "binary":
        columns["bits"] = pa.array([[row.tobytes() for row in to_binary(p).bits] for p in pages],
                                   pa.list_(pa.binary()))
    else:
        columns["vectors"] = pa.array([p.to(torch.float16).numpy().tolist() for p in pages],
                                      pa.list_(pa.list_(pa.float16())))
    if settings.candidates == "muvera":
        columns["fde"] = pa.array(list(muvera.encode_pages(pages, settings.muvera).to(torch.float16).numpy()),
                                  pa.list_(pa.float16()))
    return columns


def _write_shard(path: Path, ids: list[str], columns: dict[str, pa.Array]) -> None:
    """The whole shard to a temporary file, then renamed into place (a killed run leaves no partial shard)."""
    table = pa.table({"id": pa.array(ids, pa.string()), **columns})
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def read_shard(path: Path) -> dict[str, Any]:
    """A shard's columns as Python lists (``codes``/``vectors`` as float32 tensors per page, ``bits`` as uint8
    arrays), for tests and for loading into another engine."""
    table = pq.read_table(path).to_pydict()
    out: dict[str, Any] = {"id": table["id"], "n_vectors": table["n_vectors"]}
    for name in ("vectors", "codes", "fde"):
        if name in table:
            out[name] = [torch.tensor(np.array(v, dtype=np.float32)) for v in table[name]]
    if "scales" in table:
        out["scales"] = [torch.tensor(s, dtype=torch.float32) for s in table["scales"]]
    if "bits" in table:
        out["bits"] = [np.frombuffer(b"".join(rows), np.uint8).reshape(len(rows), -1) for rows in table["bits"]]
    return out


def _record(args: argparse.Namespace, encoder: Any, settings: IndexSettings) -> dict[str, Any]:
    return {"model": str(args.model), "fingerprint": encoder.fingerprint, "multi_vector": encoder.multi_vector,
            "settings": settings.to_dict(), "shard_size": args.shard_size}


def _previous(out: Path, made_with: dict[str, Any]) -> dict[str, Any]:
    """The index.json of an earlier run into ``out`` ({} when none); one made otherwise is refused."""
    index = out / "index.json"
    if not index.exists():
        return {}
    previous = json.loads(index.read_text())
    changed = settings_changes(previous.get("made_with", {}), made_with)
    if changed:
        raise InputError(f"{index}: written with other settings than this run ({', '.join(changed)}); its shards "
                         "cannot be mixed with this run's: give another --out")
    return previous


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    inputs = {**checkpoint_inputs("--model", args.model), **flag_paths("--page_store", args.page_store),
              "--image_root": args.image_root}
    check_outputs({"--out": args.out}, inputs, directories=("--out",))
    encoder = load_encoder_from_args(args, "cuda" if torch.cuda.is_available() else "cpu")
    settings = index_settings(args)
    check_index_settings(settings, multi_vector=encoder.multi_vector, depth=0, model=args.model)
    resolver = _sources(args)
    ids = [i for source in resolver.sources for i in source.ids()]
    made_with = _record(args, encoder, settings)
    args.out.mkdir(parents=True, exist_ok=True)
    dim = _previous(args.out, made_with).get("dim")
    write_text_atomic(args.out / "index.json", json.dumps({"made_with": made_with, "complete": False, "dim": dim},
                                                          indent=2))
    shards, total_bytes = [], 0
    for n, start in enumerate(tqdm(range(0, len(ids), args.shard_size), desc="shards", unit="shard")):
        part, path = ids[start:start + args.shard_size], args.out / f"pages-{n:05d}.parquet"
        if not path.exists():
            emb = encoder.encode_pages([resolver.get_image(i) for i in part], batch_size=args.batch_size, ids=part)
            pages = pool_pages(list(emb), settings.pool_factor, settings.pool_renormalize) if encoder.multi_vector \
                else [row[None] for row in emb]
            _write_shard(path, part, _columns(pages, settings))
            dim = pages[0].shape[-1]
        table = pq.read_table(path, columns=["n_vectors"])
        shards.append({"file": path.name, "pages": len(part), "vectors": int(sum(table["n_vectors"].to_pylist()))})
        total_bytes += path.stat().st_size
    write_text_atomic(args.out / "index.json", json.dumps({
        "made_with": made_with, "complete": True, "dim": dim, "format": settings.quantize, "pages": len(ids),
        "shards": shards, "bytes": total_bytes}, indent=2) + "\n")
    print(f"encode: {len(ids)} pages in {len(shards)} shard(s), {total_bytes} bytes, in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
