"""Inspect a page store: ``python -m data_prep.inspect STORE [--json] [--verify] [--dump PAGE_ID --png OUT.png]``.

Prints the number of pages, shards, total and mean encoded bytes, image formats and the pixel-size range (from the
per-page metadata); ``--json`` prints the same as one JSON object (``{"pages": N, "shards": ..., ...}``).
``--dump`` decodes one page and writes it as PNG. ``--list`` prints the page ids.

``--verify`` checks every shard (it opens, has its datasets, offsets within the data, ids unique across shards)
and decodes every page, with a progress bar; it prints each problem (or, with ``--json``, a report
``{"path", "shards", "pages", "ok", "problems": [{"shard", "page", "problem"}]}``) and exits with status 1 when
anything is wrong. Re-running ``data_prep.render`` on the store moves corrupt shards aside and renders their pages
again (see docs/DATA.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from data_prep.errors import cli
from data_prep.outputs import check_outputs
from data_prep.store import PageStore, StoreReport, verify_store


def summarize(store: PageStore) -> dict[str, Any]:
    """Counts and sizes of a store, read shard by shard (offsets and metadata only, never the image bytes)."""
    n_bytes, formats = 0, Counter()
    widths: list[int] = []
    heights: list[int] = []
    shards = store.shard_files()
    for shard in shards:
        with h5py.File(shard, "r") as f:
            n_bytes += int(f["offsets"][-1])
            for raw in f["meta"].asstr()[()] if "meta" in f else []:
                meta = json.loads(raw)
                formats[meta.get("format", "?")] += 1
                if "width" in meta:
                    widths.append(meta["width"])
                    heights.append(meta["height"])
    n = len(store)
    out: dict[str, Any] = {"path": str(store.path), "pages": n, "shards": len(shards), "bytes": n_bytes,
                           "mean_bytes": round(n_bytes / n, 1) if n else 0, "formats": dict(formats)}
    if widths:
        out["width"] = {"min": int(np.min(widths)), "max": int(np.max(widths)), "mean": round(float(np.mean(widths)), 1)}
        out["height"] = {"min": int(np.min(heights)), "max": int(np.max(heights)),
                         "mean": round(float(np.mean(heights)), 1)}
    return out


def verify(path: str, as_json: bool) -> int:
    """``--verify``: print the report; 0 when the store is sound, 1 otherwise."""
    with tqdm(desc="verifying pages", unit="page", file=sys.stderr) as bar:
        report = verify_store(path, on_page=lambda: bar.update(1))
    if as_json:
        print(json.dumps({**dataclasses.asdict(report), "ok": report.ok}))
    else:
        _print_report(report)
    return 0 if report.ok else 1


def _print_report(report: StoreReport) -> None:
    for p in report.problems:
        print(f"{p.shard}: " + (f"page {p.page!r}: " if p.page is not None else "") + p.problem)
    verdict = "ok" if report.ok else (f"{len(report.problems)} problem(s) in {len(report.corrupt_shards())} shard(s); "
                                      "re-run data_prep.render on the store to set them aside and render their "
                                      "pages again")
    print(f"{report.path}: {report.shards} shard(s), {report.pages} readable page(s) checked: {verdict}")


@cli
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_prep.inspect", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store", help="page store: a directory of shards or one .h5 shard")
    ap.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    ap.add_argument("--verify", action="store_true",
                    help="check every shard and decode every page; exit status 1 when anything is wrong")
    ap.add_argument("--list", action="store_true", help="print every page id, one per line")
    ap.add_argument("--dump", metavar="PAGE_ID", help="page id to decode and write as PNG (with --png)")
    ap.add_argument("--png", default="page.png", help="output file for --dump (default page.png)")
    args = ap.parse_args(argv)
    store = PageStore(args.store)
    if args.verify:
        return verify(args.store, args.json)
    if args.list:
        print("\n".join(store.ids()))
        return 0
    if args.dump:
        check_outputs({"--png": args.png}, {"STORE": args.store})
        store.get_image(args.dump).save(args.png, "PNG")
        print(f"wrote {args.png} ({args.dump}: {json.dumps(store.meta(args.dump))})")
        return 0
    info = summarize(store)
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{info['path']}: {info['pages']} pages in {info['shards']} shard(s), {info['bytes'] / 2**20:.1f} MiB "
          f"({info['mean_bytes'] / 1024:.1f} KiB/page), formats {info['formats']}")
    if "width" in info:
        print(f"  width px  {info['width']}\n  height px {info['height']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
