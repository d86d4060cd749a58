"""Benchmark: does training learn? The learnable corpus, from chance to high recall, and four ablations.

What it does
------------
1. Corpus, through the real CLIs: ``data_prep.sample_pdfs --kind titles`` (``--docs`` x ``--pages`` pages, titles of
   ``--title_words`` words from a vocabulary of ``--vocabulary``) -> ``data_prep.split_pdfs --with_text`` ->
   ``data_prep.render`` -> ``query_generation.from_text`` (the title is the query) -> ``data_prep.build_splits``
   (``--test_fraction`` held out by document); the held-out pages are rendered into a second store, the
   evaluation corpus. Then the tiny random-weight Qwen2-VL (``retriever.tiny``).
2. Experiments (``--experiments``), each a set of ``retriever.train`` runs (full fine-tuning, GradCache, seeds
   ``--seeds``), with held-out nDCG@10 / recall@10 from the trainer's ``--eval_data`` along the way:

   * ``target``: the dense head (mean pooling) and the multi-vector head; the final models are evaluated again by
     ``eval.retrieval``, and the untrained model too (chance).
   * ``control``: the dense run of ``target`` trained on pairs whose page images are shuffled among the training
     pages (each query's positive replaced by another training page, a fixed permutation): if the task leaked
     through ids or positions, this would learn too; it must stay at chance.
   * ``heads`` (ablation d): dense, multi-vector, and multi-vector without query-length normalisation
     (``--maxsim_normalization none``, the loss before), same batches and steps.
   * ``batch`` (ablation a): total batch B through GradCache (chunk ``--chunk``) at equal pairs seen
     (``--pairs_seen``) and at equal optimizer steps (``--batch_steps``).
   * ``negatives`` (ablation b): in-batch negatives only against one mined hard negative per query
     (``retriever.mine`` with a margin, by a model trained ``--miner_steps`` steps), equal steps.
   * ``matryoshka`` (ablation c): one model trained with ``--matryoshka_dims`` nested sizes, evaluated at each size,
     against models trained at that size alone (``--projection_dim``).
3. Writes ``OUT/results.json`` (every run's curve and final metrics), ``OUT/results.md`` (mean +- std over seeds),
   ``OUT/curves.png`` (held-out nDCG@10 along the target, control and heads runs) and ``OUT/ablations.png``
   (final nDCG@10 per arm, mean +- std). Finished runs (``OUT/runs/<name>/final``) are not rerun, so a killed
   benchmark resumes, and a rerun of a finished one only rewrites the tables and plots.

Usage: ``OMP_NUM_THREADS=1 python bench/learning.py --out bench_out/learning`` (all experiments, 2 runs at a time);
``--experiments target --seeds 0 --parallel 2`` is the timed target of docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRICS = ("ndcg_at_10", "recall_at_10")
EXPERIMENTS = ("target", "control", "heads", "batch", "negatives", "matryoshka")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="work and result folder (corpus and runs reused)")
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS), help="which experiments to run")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds (each experiment runs every seed)")
    parser.add_argument("--parallel", type=int, default=2, help="training runs at once (OMP_NUM_THREADS each)")
    corpus = parser.add_argument_group("corpus")
    corpus.add_argument("--docs", type=int, default=300)
    corpus.add_argument("--pages", type=int, default=4, help="pages per document")
    corpus.add_argument("--vocabulary", type=int, default=24)
    corpus.add_argument("--title_words", type=int, default=3)
    corpus.add_argument("--dpi", type=int, default=36)
    corpus.add_argument("--test_fraction", type=float, default=0.25)
    train = parser.add_argument_group("training")
    train.add_argument("--steps", type=int, default=600, help="optimizer steps of target, control, heads, negatives")
    train.add_argument("--batch", type=int, default=32, help="total batch of target, control, heads, negatives")
    train.add_argument("--chunk", type=int, default=8, help="GradCache chunk size")
    train.add_argument("--learning_rate", type=float, default=3e-3)
    train.add_argument("--dense_temperature", type=float, default=0.05)
    train.add_argument("--evals", type=int, default=6, help="held-out evaluations along each run")
    ablation = parser.add_argument_group("ablations")
    ablation.add_argument("--batches", default="8,32,128,512", help="(a) total batches")
    ablation.add_argument("--pairs_seen", type=int, default=10240, help="(a) pairs seen at equal data")
    ablation.add_argument("--batch_steps", type=int, default=40, help="(a) optimizer steps at equal steps")
    ablation.add_argument("--miner_steps", type=int, default=100, help="(b) steps of the model that mines")
    ablation.add_argument("--ablation_steps", type=int, default=300, help="(b, c) optimizer steps")
    ablation.add_argument("--matryoshka_dims", default="64,32,16,8", help="(c) nested sizes")
    return parser.parse_args(argv)


def run_python(*args: str, log: Path) -> None:
    """``python -m ...`` of this checkout, output appended to ``log``; a failure names the log."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args[:3])} failed (exit {proc.returncode}); see {log}")


def page_ids(pairs: Path) -> list[str]:
    return [page for line in pairs.read_text().splitlines() for page in json.loads(line)["pos"]]


def prepare_corpus(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """PDFs -> stores, pairs, split, tiny model (skipped when already there). Returns the paths the runs need."""
    paths = {"train": work / "train.jsonl", "test": work / "test.jsonl", "store": work / "store",
             "test_store": work / "test_store", "model": work / "tiny-qwen2-vl", "shuffled": work / "shuffled.jsonl"}
    if all(p.exists() for p in paths.values()):
        return paths
    log, words = work / "prepare.log", str(args.title_words)
    run_python("-m", "data_prep.sample_pdfs", "--kind", "titles", "--out", str(work / "pdfs"), "--docs",
               str(args.docs), "--pages", str(args.pages), "--vocabulary", str(args.vocabulary), "--title_words",
               words, log=log)
    run_python("-m", "data_prep.split_pdfs", "--pdfs", str(work / "pdfs"), "--out", str(work / "pages.jsonl"),
               "--with_text", log=log)
    run_python("-m", "data_prep.render", "--pages", str(work / "pages.jsonl"), "--out", str(paths["store"]),
               "--dpi", str(args.dpi), "--workers", "2", log=log)
    run_python("-m", "query_generation.from_text", "--pages", str(work / "pages.jsonl"), "--out",
               str(work / "pairs.jsonl"), "--min_words", words, "--max_words", words, log=log)
    run_python("-m", "data_prep.build_splits", "--pairs", str(work / "pairs.jsonl"), "--train", str(paths["train"]),
               "--test", str(paths["test"]), "--test_fraction", str(args.test_fraction), log=log)
    held_out = set(page_ids(paths["test"]))
    lines = [line for line in (work / "pages.jsonl").read_text().splitlines() if json.loads(line)["id"] in held_out]
    (work / "pages_test.jsonl").write_text("\n".join(lines) + "\n")
    run_python("-m", "data_prep.render", "--pages", str(work / "pages_test.jsonl"), "--out", str(paths["test_store"]),
               "--dpi", str(args.dpi), "--workers", "2", log=log)
    run_python("-m", "retriever.tiny", "--arch", "qwen2_vl", "--out", str(paths["model"]), log=log)
    write_shuffled(paths["train"], paths["shuffled"])
    return paths


def write_shuffled(train: Path, out: Path) -> None:
    """The training pairs with every positive replaced by another training page (one fixed derangement)."""
    pairs = [json.loads(line) for line in train.read_text().splitlines()]
    pages = [pair["pos"][0] for pair in pairs]
    order = list(range(len(pages)))
    random.Random(0).shuffle(order)
    moved = {pages[i]: pages[order[(k + 1) % len(order)]] for k, i in enumerate(order)}
    out.write_text("".join(json.dumps({**pair, "pos": [moved[p] for p in pair["pos"]]}) + "\n" for pair in pairs))


@dataclass
class Run:
    """One training run: ``name`` (its folder), the experiment and arm it belongs to, and its flags."""
    name: str
    experiment: str
    arm: str
    seed: int
    steps: int
    batch: int
    flags: list[str] = field(default_factory=list)
    train_data: str = "train"
    eval_dims: list[int] = field(default_factory=list)  # (c): evaluate the final model at these sizes too


def head_flags(head: str, args: argparse.Namespace) -> list[str]:
    if head == "dense":
        return ["--head", "dense", "--pooling", "mean", "--temperature", str(args.dense_temperature)]
    flags = ["--head", "multi"]
    return flags + (["--maxsim_normalization", "none"] if head == "multi_raw" else [])


def plan(args: argparse.Namespace, experiments: list[str]) -> list[Run]:
    seeds = [int(s) for s in args.seeds.split(",")]
    runs: list[Run] = []
    for seed in seeds:
        base = dict(seed=seed, steps=args.steps, batch=args.batch)
        if "target" in experiments or "heads" in experiments:
            heads = ["dense", "multi"] + (["multi_raw"] if "heads" in experiments else [])
            runs += [Run(f"{head}_s{seed}", "heads", head, flags=head_flags(head, args), **base) for head in heads]
        if "control" in experiments:
            runs.append(Run(f"shuffled_s{seed}", "control", "dense, shuffled images", flags=head_flags("dense", args),
                            train_data="shuffled", **base))
        if "batch" in experiments:
            for batch in (int(b) for b in args.batches.split(",")):
                runs.append(Run(f"batch{batch}_pairs_s{seed}", "batch (equal pairs seen)", str(batch), seed,
                                max(1, args.pairs_seen // batch), batch, head_flags("dense", args)))
                runs.append(Run(f"batch{batch}_steps_s{seed}", "batch (equal steps)", str(batch), seed,
                                args.batch_steps, batch, head_flags("dense", args)))
        if "negatives" in experiments:
            short = dict(seed=seed, steps=args.ablation_steps, batch=args.batch)
            runs.append(Run(f"inbatch_s{seed}", "negatives", "in-batch only", flags=head_flags("dense", args), **short))
            runs.append(Run(f"mined_s{seed}", "negatives", "+1 mined hard negative", train_data="mined",
                            flags=head_flags("dense", args) + ["--num_negatives", "1"], **short))
        if "matryoshka" in experiments:
            dims = [int(d) for d in args.matryoshka_dims.split(",")]
            short = dict(seed=seed, steps=args.ablation_steps, batch=args.batch)
            runs.append(Run(f"matryoshka_s{seed}", "matryoshka", "nested", eval_dims=dims, **short,
                            flags=head_flags("dense", args) + ["--projection_dim", str(dims[0]), "--matryoshka_dims",
                                                               args.matryoshka_dims]))
            runs += [Run(f"dim{d}_s{seed}", "matryoshka", f"trained at {d}", **short,
                         flags=head_flags("dense", args) + ["--projection_dim", str(d)]) for d in dims]
    return runs


def train(args: argparse.Namespace, paths: dict[str, Path], work: Path, run: Run) -> dict:
    """One training run (skipped when finished); its held-out curve and final metrics."""
    out = work / "runs" / run.name
    started = time.perf_counter()
    data = mined_pairs(args, paths, work) if run.train_data == "mined" else paths[run.train_data]
    if not (out / "final").exists():
        chunk = min(args.chunk, run.batch)
        run_python("-m", "retriever.train", "--model_name_or_path", str(paths["model"]), "--output_dir", str(out),
                   "--train_data", str(data), "--page_store", str(paths["store"]), "--eval_data", str(paths["test"]),
                   "--eval_page_store", str(paths["test_store"]), "--eval_steps",
                   str(max(1, run.steps // args.evals)), "--eval_batch_size", "32", "--per_device_train_batch_size",
                   str(run.batch), "--gc_chunk_size", str(chunk), "--max_steps", str(run.steps), "--training_mode",
                   "full", "--learning_rate", str(args.learning_rate), "--warmup_steps", "10", "--seed",
                   str(run.seed), "--save_steps", "0", "--dataloader_num_workers", "0", "--report_to", "none",
                   "--disable_tqdm", *run.flags, log=work / "runs" / f"{run.name}.log")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    curve = {r["step"]: {m: r[f"eval_{m}"] for m in METRICS} for r in records if f"eval_{METRICS[0]}" in r}
    result = {"run": run.__dict__, "curve": curve, "final": curve[max(curve)], "seconds": time.perf_counter() - started}
    if run.eval_dims:
        result["by_dim"] = {d: evaluate(paths, work, out / "final", f"{run.name}_d{d}", d) for d in run.eval_dims}
    print(f"{run.name}: {result['final']} ({result['seconds']:.0f} s)", flush=True)
    return result


def mined_pairs(args: argparse.Namespace, paths: dict[str, Path], work: Path) -> Path:
    """(b): training pairs with hard negatives mined by a dense model trained ``--miner_steps`` steps (seed 0)."""
    out = work / "mined.jsonl"
    if out.exists():
        return out
    miner = Run("miner", "negatives", "miner", 0, args.miner_steps, args.batch, head_flags("dense", args))
    train(args, paths, work, miner)
    run_python("-m", "retriever.mine", "--model", str(work / "runs" / "miner" / "final"), "--train_data",
               str(paths["train"]), "--page_store", str(paths["store"]), "--out", str(out), "--num_negatives", "1",
               "--range_min", "1", "--range_max", "20", "--relative_margin", "0.05", log=work / "mine.log")
    return out


def evaluate(paths: dict[str, Path], work: Path, model: Path, name: str, dim: int | None = None) -> dict[str, float]:
    """Held-out metrics of ``model`` by ``eval.retrieval`` (at Matryoshka size ``dim`` when given)."""
    out = work / "eval" / name
    if not (out / paths["test"].stem / "metrics.json").exists():
        run_python("-m", "eval.retrieval", "--model", str(model), "--tasks", str(paths["test"]), "--page_store",
                   str(paths["test_store"]), "--out", str(out), "--k", "1,5,10", "--batch_size", "32",
                   *(["--dim", str(dim)] if dim else []), log=work / "eval" / f"{name}.log")
    aggregate = json.loads((out / paths["test"].stem / "metrics.json").read_text())["aggregate"]
    return {m: aggregate[m] for m in METRICS}


def summarise(results: list[dict]) -> dict[str, dict[str, dict]]:
    """experiment -> arm -> {metric: [values over seeds]} of the final held-out metrics."""
    table: dict[str, dict[str, dict]] = {}
    for result in results:
        run = result["run"]
        cell = table.setdefault(run["experiment"], {}).setdefault(run["arm"], {})
        for metric in METRICS:
            cell.setdefault(metric, []).append(result["final"][metric])
        for dim, metrics in result.get("by_dim", {}).items():
            for metric in METRICS:
                table[run["experiment"]].setdefault(f"{run['arm']} @ {dim}", {}).setdefault(metric, []).append(
                    metrics[metric])
    return table


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} +- {spread:.3f} (n={len(values)})"


def markdown(table: dict, untrained: dict[str, float]) -> str:
    lines = ["| experiment | arm | " + " | ".join(f"held-out {m}" for m in METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS),
             "| - | untrained | " + " | ".join(f"{untrained[m]:.3f}" for m in METRICS) + " |"]
    for experiment, arms in table.items():
        lines += [f"| {experiment} | {arm} | " + " | ".join(mean_std(cell[m]) for m in METRICS) + " |"
                  for arm, cell in arms.items()]
    return "\n".join(lines) + "\n"


def plot(results: list[dict], out: Path) -> None:
    """Held-out nDCG@10 against optimizer steps of the target, control and heads runs (one line per seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    colours: dict[str, str] = {}
    for result in results:
        run = result["run"]
        if run["experiment"] not in ("heads", "control"):
            continue
        steps = sorted(result["curve"])
        colour = colours.setdefault(run["arm"], f"C{len(colours)}")
        ax.plot(steps, [result["curve"][s]["ndcg_at_10"] for s in steps], color=colour, alpha=0.8,
                label=run["arm"] if run["seed"] == min(r["run"]["seed"] for r in results) else None)
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("held-out nDCG@10")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)


def plot_ablations(table: dict, out: Path) -> None:
    """One panel per experiment: final held-out nDCG@10 per arm, mean with the standard deviation over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(3.2 * len(table), 3.6), dpi=100, squeeze=False)
    for ax, (experiment, arms) in zip(axes[0], table.items()):
        values = [arm["ndcg_at_10"] for arm in arms.values()]
        spreads = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        ax.bar(range(len(arms)), [statistics.mean(v) for v in values], yerr=spreads, capsize=3)
        ax.set_xticks(range(len(arms)), list(arms), rotation=60, ha="right", fontsize=7)
        ax.set_title(experiment, fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("held-out nDCG@10")
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    args = parse_args(argv)
    experiments = args.experiments.split(",")
    unknown = set(experiments) - set(EXPERIMENTS)
    if unknown:
        raise SystemExit(f"unknown experiments {sorted(unknown)}; choose from {', '.join(EXPERIMENTS)}")
    work = args.out
    work.mkdir(parents=True, exist_ok=True)
    paths = prepare_corpus(args, work)
    print(f"corpus ready: {len(page_ids(paths['train']))} train pairs, {len(page_ids(paths['test']))} held out "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    untrained = evaluate(paths, work, paths["model"], "untrained")
    runs = plan(args, experiments)
    if "negatives" in experiments:
        mined_pairs(args, paths, work)
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda run: train(args, paths, work, run), runs))
    finals = {r["run"]["name"]: evaluate(paths, work, work / "runs" / r["run"]["name"] / "final", r["run"]["name"])
              for r in results if r["run"]["experiment"] == "heads" and r["run"]["arm"] in ("dense", "multi")}
    table = summarise(results)
    (work / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                   "untrained": untrained, "eval_retrieval": finals,
                                                   "runs": results}, indent=2) + "\n")
    (work / "results.md").write_text(markdown(table, untrained))
    plot(results, work / "curves.png")
    plot_ablations(table, work / "ablations.png")
    print(markdown(table, untrained))
    print("eval.retrieval on the final target models: " + json.dumps(finals))
    print(f"total {time.perf_counter() - started:.0f} s; results in {work}")


if __name__ == "__main__":
    main()
