"""Benchmark: does a bigger contrastive batch (the reason GradCache exists) give a better retriever?

What it does
------------
1. Corpus: the PDFs under ``--pdfs`` (default ``../shared/pdfs``; the quickstart's generated PDFs when absent) plus
   ``--synthetic_docs`` generated reports, listed with their text layer, rendered at ``--dpi`` into a page store;
   one text-layer sentence per page is its query (``query_generation.from_text``); ``data_prep.build_splits``
   holds out ``--test_fraction`` of the pairs with no document shared between train and test. The held-out pages
   are rendered into a second store, the evaluation corpus.
2. For every total batch in ``--batches`` and seed in ``--seeds``, the tiny random-weight Qwen2-VL
   (``retriever.tiny``) is trained (dense head, full fine-tuning, GradCache chunks of ``--chunk``, constant lr)
   on the same number of pairs: ``--epochs`` x E pairs, where E (the "epoch", ``--epoch_pairs``) is a multiple of
   the largest batch (by default 512 pairs, about half of the default corpus's train pairs, for the CPU
   budget). So batch 8 takes 64x more optimizer steps than batch 512; only the
   batch (the number of in-batch negatives) and the step count differ. The held-out nDCG@10 and recall@10 are
   measured with the trainer's own ``--eval_data`` after every E pairs (and before training, at 0 pairs).
3. Writes ``OUT/results.json``, ``OUT/results.md`` (mean +- std over seeds per batch and epoch) and
   ``OUT/batch_scaling.png`` (mean with a min-max band over seeds).

Usage: ``OMP_NUM_THREADS=1 python bench/batch_scaling.py --out bench_out/batch_scaling`` (the configuration of
docs/BENCHMARKS.md: 3 runs at a time, one thread each); ``--batches 8,16 --seeds 0 --epochs 1 --synthetic_docs 4
--pdfs`` for a smoke run. Finished runs (``OUT/b<batch>_s<seed>/final``) are not rerun.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRICS = ("ndcg_at_10", "recall_at_10")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="work and result folder (corpus is reused)")
    parser.add_argument("--pdfs", nargs="*", default=[str(REPO.parent / "shared" / "pdfs" / "olmocr-gnarly"),
                                                      str(REPO.parent / "shared" / "pdfs" / "py-pdf-sample-files")],
                        help="PDF folders of the corpus (missing ones are skipped)")
    parser.add_argument("--synthetic_docs", type=int, default=80, help="generated reports added to the corpus")
    parser.add_argument("--synthetic_pages", type=int, default=10, help="pages per generated report")
    parser.add_argument("--dpi", type=int, default=36, help="render resolution of the page stores")
    parser.add_argument("--max_pixels", type=int, default=112 * 112, help="page resolution cap of the encoder")
    parser.add_argument("--test_fraction", type=float, default=0.2, help="held-out share of pairs (by document)")
    parser.add_argument("--batches", default="8,64,512", help="total batches to compare")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of E pairs each (see the module docstring)")
    parser.add_argument("--epoch_pairs", type=int, default=512,
                        help="E, pairs per epoch (a multiple of the largest batch; 0: all train pairs, rounded down)")
    parser.add_argument("--chunk", type=int, default=8, help="GradCache chunk size")
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--parallel", type=int, default=3,
                        help="training runs at once (each with OMP_NUM_THREADS threads); on a shared box, N runs of "
                        "one thread get more of it than one run of N threads")
    return parser.parse_args(argv)


def _python(*args: str, log: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with log.open("a") as handle:
        proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args[:3])} failed (exit {proc.returncode}); see {log}")


def prepare_corpus(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """pages.jsonl -> stores, pairs, split (skipped when already there). Returns the paths the runs need."""
    paths = {"train": work / "train.jsonl", "test": work / "test.jsonl", "store": work / "store",
             "test_store": work / "test_store", "model": work / "tiny-qwen2-vl"}
    if all(p.exists() for p in paths.values()):
        return paths
    log = work / "prepare.log"
    pdfs = [p for p in args.pdfs if Path(p).is_dir()]
    if args.synthetic_docs or not pdfs:
        _python("-m", "data_prep.sample_pdfs", "--out", str(work / "synthetic"), "--docs",
                str(args.synthetic_docs or 16), "--pages", str(args.synthetic_pages), log=log)
        pdfs.append(str(work / "synthetic"))
    _python("-m", "data_prep.split_pdfs", "--pdfs", *pdfs, "--out", str(work / "pages.jsonl"), "--with_text", log=log)
    _python("-m", "query_generation.from_text", "--pages", str(work / "pages.jsonl"), "--out",
            str(work / "pairs.jsonl"), log=log)
    _python("-m", "data_prep.build_splits", "--pairs", str(work / "pairs.jsonl"), "--train", str(paths["train"]),
            "--test", str(paths["test"]), "--test_fraction", str(args.test_fraction), log=log)
    wanted = {page for name in ("train", "test") for line in paths[name].read_text().splitlines()
              for page in json.loads(line)["pos"]}
    test_pages = {page for line in paths["test"].read_text().splitlines() for page in json.loads(line)["pos"]}
    for name, keep in (("pages_used.jsonl", wanted), ("pages_test.jsonl", test_pages)):
        lines = [line for line in (work / "pages.jsonl").read_text().splitlines() if json.loads(line)["id"] in keep]
        (work / name).write_text("\n".join(lines) + "\n")
    _python("-m", "data_prep.render", "--pages", str(work / "pages_used.jsonl"), "--out", str(paths["store"]),
            "--dpi", str(args.dpi), "--workers", "2", log=log)
    _python("-m", "data_prep.render", "--pages", str(work / "pages_test.jsonl"), "--out", str(paths["test_store"]),
            "--dpi", str(args.dpi), "--workers", "2", log=log)
    _python("-m", "retriever.tiny", "--arch", "qwen2_vl", "--out", str(paths["model"]), log=log)
    return paths


def train_run(args: argparse.Namespace, paths: dict[str, Path], out: Path, batch: int, seed: int,
              epoch_pairs: int) -> dict:
    """One training run; returns held-out metrics by pairs seen (read back from its log.jsonl)."""
    steps_per_epoch = epoch_pairs // batch
    if not (out / "final").exists():
        _python("-m", "retriever.train", "--model_name_or_path", str(paths["model"]), "--output_dir", str(out),
                "--train_data", str(paths["train"]), "--page_store", str(paths["store"]),
                "--eval_data", str(paths["test"]), "--eval_page_store", str(paths["test_store"]),
                "--eval_steps", str(steps_per_epoch), "--eval_batch_size", "32",
                "--per_device_train_batch_size", str(batch), "--gc_chunk_size", str(args.chunk),
                "--max_steps", str(args.epochs * steps_per_epoch), "--training_mode", "full", "--head", "dense",
                "--learning_rate", str(args.learning_rate), "--lr_scheduler_type", "constant",
                "--temperature", str(args.temperature), "--max_pixels", str(args.max_pixels), "--seed", str(seed),
                "--save_steps", "0", "--dataloader_num_workers", "0", "--report_to", "none", "--disable_tqdm",
                log=out.with_suffix(".log"))
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {str(r["step"] * batch): {m: r[f"eval_{m}"] for m in METRICS} for r in records if f"eval_{METRICS[0]}" in r}


def timed_run(args: argparse.Namespace, paths: dict[str, Path], work: Path, batch: int, seed: int,
              epoch_pairs: int) -> dict:
    started = time.perf_counter()
    metrics = train_run(args, paths, work / f"b{batch}_s{seed}", batch, seed, epoch_pairs)
    print(f"batch {batch} seed {seed}: {metrics} ({time.perf_counter() - started:.0f} s)", flush=True)
    return metrics


def baseline(paths: dict[str, Path], work: Path) -> dict[str, float]:
    """Held-out metrics of the untrained model (0 pairs seen)."""
    out = work / "untrained"
    if not (out / "metrics.json").exists():
        _python("-m", "eval.retrieval", "--model", str(paths["model"]), "--tasks", str(paths["test"]), "--page_store",
                str(paths["test_store"]), "--out", str(out), "--k", "5,10", "--batch_size", "32",
                log=work / "untrained.log")
    aggregate = json.loads((out / paths["test"].stem / "metrics.json").read_text())["aggregate"]
    return {m: aggregate[m] for m in METRICS}


def summarise(results: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """batch -> pairs seen -> metric -> values over seeds."""
    table: dict[str, dict[str, dict[str, list[float]]]] = {}
    for batch, runs in results.items():
        for seen_metrics in runs.values():
            for seen, metrics in seen_metrics.items():
                for metric, value in metrics.items():
                    table.setdefault(batch, {}).setdefault(seen, {}).setdefault(metric, []).append(value)
    return table


def markdown(table: dict, untrained: dict[str, float]) -> str:
    header = " | ".join(f"{m} (mean +- std)" for m in METRICS)
    lines = [f"| total batch | pairs seen | optimizer steps | {header} |",
             "|---" * (3 + len(METRICS)) + "|",
             "| (untrained) | 0 | 0 | " + " | ".join(f"{untrained[m]:.4f}" for m in METRICS) + " |"]
    for batch in sorted(table, key=int):
        for seen in sorted(table[batch], key=int):
            cells = []
            for metric in METRICS:
                values = table[batch][seen][metric]
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):.4f} +- {spread:.4f} (n={len(values)})")
            lines.append(f"| {batch} | {seen} | {int(seen) // int(batch)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: dict, untrained: dict[str, float], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 3.6), dpi=100)
    for ax, metric in zip(axes, METRICS):
        for batch in sorted(table, key=int):
            seen = [0] + sorted((int(s) for s in table[batch]))
            values = [[untrained[metric]]] + [table[batch][str(s)][metric] for s in seen[1:]]
            ax.plot(seen, [statistics.mean(v) for v in values], marker="o", label=f"batch {batch}")
            ax.fill_between(seen, [min(v) for v in values], [max(v) for v in values], alpha=0.2)
        ax.set_xlabel("training pairs seen")
        ax.set_ylabel(f"held-out {metric}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = args.out
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    paths = prepare_corpus(args, work)
    train_pairs = len(paths["train"].read_text().splitlines())
    batches = [int(b) for b in args.batches.split(",")]
    epoch_pairs = (args.epoch_pairs or train_pairs) // max(batches) * max(batches)
    if epoch_pairs == 0 or epoch_pairs > train_pairs:
        raise SystemExit(f"{train_pairs} train pairs cannot fill an epoch of {args.epoch_pairs} pairs in batches of "
                         f"{max(batches)}; add --synthetic_docs or lower --epoch_pairs")
    print(f"corpus ready: {train_pairs} train pairs, {len(paths['test'].read_text().splitlines())} held out; "
          f"epoch = {epoch_pairs} pairs ({time.perf_counter() - started:.0f} s)", flush=True)
    untrained = baseline(paths, work)
    jobs = [(batch, int(seed)) for batch in batches for seed in args.seeds.split(",")]
    with ThreadPoolExecutor(args.parallel) as pool:
        done = pool.map(lambda job: timed_run(args, paths, work, *job, epoch_pairs), jobs)
        results: dict[str, dict[str, dict]] = {}
        for (batch, seed), metrics in zip(jobs, done):
            results.setdefault(str(batch), {})[str(seed)] = metrics
    table = summarise(results)
    (work / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                   "train_pairs": train_pairs, "epoch_pairs": epoch_pairs,
                                                   "untrained": untrained, "runs": results}, indent=2) + "\n")
    (work / "results.md").write_text(markdown(table, untrained))
    plot(table, untrained, work / "batch_scaling.png")
    print(markdown(table, untrained))
    print(f"total {time.perf_counter() - started:.0f} s; results in {work}")


if __name__ == "__main__":
    main()
