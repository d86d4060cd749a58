"""Benchmark: PDF rendering throughput and page-store random reads.

Measures, on the same PDFs at the same dpi with JPEG encoding included:
  * ``pdftoppm`` (poppler), one process, ``-jpeg -jpegopt quality=Q`` (one subprocess per PDF);
  * a bare PyMuPDF + PIL loop in this process (the floor the pipeline's overhead is measured against);
  * ``python -m data_prep.render`` run through its ``main`` (task queue, pipes, HDF5 shard writes with fsync) with
    1 and 2 worker processes, with the CPU seconds per page of the whole pipeline (main process + workers; needs
    psutil), and the one-time cold start of a fresh CLI run on a 1-page list (interpreter, PyMuPDF import, worker
    start), reported separately.
On a shared machine the wall-clock 1->2 process scaling is limited by the free cores (the load average is
printed); the CPU cost per page shows what the pipeline itself adds.
Then random reads per second of N pages: ``PageStore.get_bytes`` / ``get_image`` against opening individual PNG
files of the same pages (``open().read()`` / ``PIL.Image.open().load()``).

The long-side cap is set above the tallest page (``--max_side``) so every tool renders the same pixels.
Run: ``python bench/render.py --pdfs ../shared/pdfs/olmocr-gnarly --dpi 144``
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pymupdf
from PIL import Image

from data_prep.rasterize import RenderSettings, encode, render_page
from data_prep.render import main as render_main
from data_prep.split_pdfs import main as split_pdfs_main
from data_prep.store import PageStore, PageStoreWriter


def bench_pdftoppm(pdfs: list[Path], dpi: float, quality: int, work: Path) -> float:
    out = work / "pdftoppm"
    out.mkdir()
    t0 = time.perf_counter()
    for i, pdf in enumerate(pdfs):
        subprocess.run(["pdftoppm", "-r", str(dpi), "-jpeg", "-jpegopt", f"quality={quality}", str(pdf),
                        str(out / f"d{i}")], check=True, capture_output=True)
    return time.perf_counter() - t0


def bench_bare_loop(pages: list[dict], settings: RenderSettings) -> float:
    pymupdf.TOOLS.mupdf_display_errors(False)
    t0 = time.perf_counter()
    doc, source = None, None
    for rec in pages:
        if rec["source"] != source:
            doc, source = pymupdf.open(rec["source"]), rec["source"]
        img, _ = render_page(doc.load_page(rec["page"] - 1), settings)
        encode(img, settings)
    return time.perf_counter() - t0


class _CpuMeter:
    """CPU seconds of this process and all its descendants (render workers), sampled every 0.1 s by a thread
    because workers exit at the end of a run; accurate to about 0.1 s per worker."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop.wait(0.1):
            for child in self.me.children(recursive=True):
                try:
                    t = child.cpu_times()
                    self.seen[child.pid] = t.user + t.system
                except Exception:  # exited between listing and reading
                    pass

    def __enter__(self) -> "_CpuMeter":
        t = self.me.cpu_times()
        self.base = t.user + t.system
        self.before = {c.pid: sum(c.cpu_times()[:2]) for c in self.me.children(recursive=True)}
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        t = self.me.cpu_times()
        own = t.user + t.system - self.base
        self.seconds = own + sum(v - self.before.get(pid, 0.0) for pid, v in self.seen.items())


def bench_pipeline(pages_path: Path, out: Path, settings: RenderSettings, workers: int) -> tuple[float, int, float]:
    """Wall seconds, pages rendered, CPU seconds (this process + workers) of the render CLI into a new store."""
    argv = ["--pages", str(pages_path), "--out", str(out), "--dpi", str(settings.dpi), "--max_side",
            str(settings.max_side), "--format", settings.fmt, "--quality", str(settings.quality),
            "--workers", str(workers)]
    with _CpuMeter() as cpu:
        t0 = time.perf_counter()
        render_main(argv)
        wall = time.perf_counter() - t0
    return wall, len(PageStore(out)), cpu.seconds


def bench_cold_start(pages_path: Path, out: Path) -> float:
    """Seconds for a fresh ``python -m data_prep.render`` on a 1-page list: interpreter, imports, worker start."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "data_prep.render", "--pages", str(pages_path), "--out", str(out)],
                   check=True, capture_output=True)
    return time.perf_counter() - t0


def bench_reads(store_path: Path, work: Path, n_pages: int, n_reads: int, n_decodes: int,
                seed: int) -> dict[str, float]:
    """Re-encode ``n_pages`` pages as PNG into a store and into files, then time random reads of both."""
    src = PageStore(store_path)
    ids = random.Random(seed).sample(src.ids(), min(n_pages, len(src)))
    png_dir, png_store = work / "png_files", work / "png_store"
    png_dir.mkdir()
    with PageStoreWriter(png_store) as w:
        for i, pid in enumerate(ids):
            buf = io.BytesIO()
            src.get_image(pid).save(buf, "PNG", compress_level=6)
            w.add(pid, buf.getvalue())
            (png_dir / f"{i}.png").write_bytes(buf.getvalue())
    order = [random.Random(seed + 1).randrange(len(ids)) for _ in range(n_reads)]
    store = PageStore(png_store)
    res = {}
    for name, n, fn in (
        ("store_bytes", n_reads, lambda i: store.get_bytes(ids[i])),
        ("files_bytes", n_reads, lambda i: (png_dir / f"{i}.png").read_bytes()),
        ("store_decode", n_decodes, lambda i: store.get_image(ids[i]).load()),
        ("files_decode", n_decodes, lambda i: Image.open(png_dir / f"{i}.png").convert("RGB").load()),
    ):
        fn(order[0])
        t0 = time.perf_counter()
        for i in order[:n]:
            fn(i)
        res[name] = n / (time.perf_counter() - t0)
    res["mean_png_kib"] = sum(f.stat().st_size for f in png_dir.iterdir()) / len(ids) / 1024
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pdfs", default="../shared/pdfs/olmocr-gnarly", help="folder of PDFs")
    ap.add_argument("--dpi", type=float, default=144.0)
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality for every tool")
    ap.add_argument("--max_side", type=int, default=30000, help="above the tallest page, so nothing is capped")
    ap.add_argument("--read_pages", type=int, default=200, help="pages in the random-read test")
    ap.add_argument("--reads", type=int, default=5000, help="random raw-byte reads per variant")
    ap.add_argument("--decodes", type=int, default=200, help="random reads + PNG decodes per variant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip_pdftoppm", action="store_true")
    args = ap.parse_args()
    load_before = os.getloadavg()
    settings = RenderSettings(args.dpi, args.max_side, "jpeg", args.quality)
    work = Path(tempfile.mkdtemp(prefix="bench_render_"))
    try:
        pages_path = work / "pages.jsonl"
        split_pdfs_main(["--pdfs", args.pdfs, "--out", str(pages_path)])
        pages = [json.loads(line) for line in pages_path.read_text().splitlines()]
        pages = [r for r in pages if not r.get("encrypted")]  # every tool must be able to open every PDF
        pages_path.write_text("".join(json.dumps(r) + "\n" for r in pages))
        pdfs = sorted({Path(r["source"]) for r in pages})
        n = len(pages)
        res: dict[str, object] = {"pdfs": len(pdfs), "pages": n, "dpi": args.dpi, "quality": args.quality}
        if not args.skip_pdftoppm:
            res["pdftoppm_pps"] = n / bench_pdftoppm(pdfs, args.dpi, args.quality, work)
        cpu0 = time.process_time()
        res["bare_loop_pps"] = n / bench_bare_loop(pages, settings)
        res["bare_loop_cpu_ms_per_page"] = 1000 * (time.process_time() - cpu0) / n
        one = work / "one_page.jsonl"
        one.write_text(json.dumps(pages[0]) + "\n")
        res["cold_start_1_page_cli_s"] = bench_cold_start(one, work / "store_one")
        for workers in (1, 2):
            secs, rendered, cpu_s = bench_pipeline(pages_path, work / f"store{workers}", settings, workers)
            res[f"pipeline_{workers}p_pps"] = rendered / secs
            res[f"pipeline_{workers}p_cpu_ms_per_page"] = 1000 * cpu_s / rendered
        res["scaling_1_to_2"] = res["pipeline_2p_pps"] / res["pipeline_1p_pps"]
        if "pdftoppm_pps" in res:
            res["pipeline_1p_vs_pdftoppm"] = res["pipeline_1p_pps"] / res["pdftoppm_pps"]
        res["pipeline_1p_vs_bare_loop"] = res["pipeline_1p_pps"] / res["bare_loop_pps"]
        res["reads_per_s"] = bench_reads(work / "store1", work, args.read_pages, args.reads, args.decodes,
                                         args.seed)
        res["loadavg_before"], res["loadavg_after"] = load_before, os.getloadavg()
        res["command"] = "python " + " ".join(sys.argv)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
