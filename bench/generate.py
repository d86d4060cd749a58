"""Benchmark: query-generation throughput (pages/s).

* transformers backend: ``query_generation.generate`` (page reads, image encoding, chat inputs, batched
  ``generate``, parsing, fsynced writes) against a bare ``model.generate`` loop over the same batches, whose inputs
  are built before timing; the difference is the pipeline's overhead (target <= 10 %). The model is a tiny
  checkpoint (``--arch``) first taught to answer in JSON (as the tests do), so the pipeline takes its normal
  path (parse, one fsynced write per batch) rather than logging a failure per page; or ``--model DIR``. Greedy
  decoding of ``--max_new_tokens`` with EOS disabled: both sides generate exactly the same number of tokens.
* openai backend: the same pages against a local stub server answering after ``--latency`` seconds, with 1 and
  8 requests in flight.

Run: ``python -m bench.generate`` (from the repository root). Best of ``--repeats`` runs.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from query_generation.generators.hf_generate import TransformersGenerator
from query_generation.generate import build_parser, generate
from query_generation.prompt import GENERATION_SLOTS, PromptFile
from query_generation.work import list_pages, load_image, make_batches
from data_prep.store import PageStore
from retriever.model.tiny_checkpoints import build_tiny
from tests.helpers.openai_stub import StubServer
from tests.helpers.query_data import SHORT_PROMPT, make_store, teach_json_answer


def gen_args(store: Path, out: Path, backend: str, model: str, args: argparse.Namespace, *extra: str):
    return build_parser().parse_args(["--store", str(store), "--out", str(out), "--backend", backend, "--model", model,
                                      "--max_new_tokens", str(args.max_new_tokens), "--batch_size",
                                      str(args.batch_size), "--prompt", str(args.prompt), "--queries_per_page", "1",
                                      *extra])


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_transformers(model: str, store: Path, tmp: Path, args: argparse.Namespace) -> tuple[float, float]:
    backend = TransformersGenerator(model, "cpu")
    backend.net.generation_config.eos_token_id = None  # fixed output length on both sides
    prompt = PromptFile.load(args.prompt, GENERATION_SLOTS)
    pages = PageStore(store)
    batches = []
    for batch in make_batches(list_pages(pages, None), args.batch_size):
        examples = []
        for page in batch:
            image, url = load_image(pages, page.id, None)
            examples.append(backend.inputs.example(prompt.messages(url, num_queries=1), image))
        batches.append(backend.inputs.batch(examples))

    def bare() -> None:
        with torch.inference_mode():
            for batch in batches:
                backend.net.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=False,
                                     pad_token_id=backend.inputs.adapter.pad_id)

    runs = iter(range(10**6))

    def pipeline() -> None:
        out = tmp / f"hf-{next(runs)}.jsonl"
        counts = generate(gen_args(store, out, "transformers", model, args), backend)
        if counts["failed"]:
            print(f"note: {counts['failed']} pages failed (their failure records add one fsync each)")

    bare()  # warm-up
    return best_of(args.repeats, bare), best_of(args.repeats, pipeline)


def bench_openai(store: Path, tmp: Path, args: argparse.Namespace, concurrency: int) -> float:
    runs = iter(range(10**6))
    with StubServer(delay=args.latency) as stub:
        def run() -> None:
            out = tmp / f"oa-{concurrency}-{next(runs)}.jsonl"
            generate(gen_args(store, out, "openai", "served-model", args, "--base_url", stub.base_url,
                              "--concurrency", str(concurrency)))
        return best_of(args.repeats, run)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="qwen2_vl", help="tiny architecture to build (default qwen2_vl)")
    p.add_argument("--model", help="time this checkpoint directory instead of a tiny one")
    p.add_argument("--pages", type=int, default=32, help="pages per timed run (default 32)")
    p.add_argument("--batch_size", type=int, default=8, help="pages per batch (default 8)")
    p.add_argument("--max_new_tokens", type=int, default=64, help="tokens generated per page (default 64)")
    p.add_argument("--latency", type=float, default=0.05, help="stub server seconds per request (default 0.05)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs, best kept (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        args.prompt = tmp / "prompt.txt"
        args.prompt.write_text(SHORT_PROMPT)
        if args.model:
            model = args.model
        else:
            messages = PromptFile.load(args.prompt, GENERATION_SLOTS).messages("data:,", num_queries=1)
            model = str(teach_json_answer(build_tiny(args.arch, tmp / "tiny"), tmp / "model", messages, steps=40))
        store = make_store(tmp / "store", [f"doc{i // 4}/{i % 4 + 1}" for i in range(args.pages)])
        bare, pipeline = bench_transformers(model, store, tmp, args)
        print(f"transformers ({args.model or args.arch}, {args.pages} pages, batch {args.batch_size}, "
              f"{args.max_new_tokens} new tokens): bare generate {args.pages / bare:.2f} pages/s, "
              f"pipeline {args.pages / pipeline:.2f} pages/s, overhead {100 * (pipeline / bare - 1):+.1f} %")
        for concurrency in (1, 8):
            seconds = bench_openai(store, tmp, args, concurrency)
            print(f"openai stub ({args.latency * 1000:.0f} ms/request), concurrency {concurrency}: "
                  f"{args.pages / seconds:.1f} pages/s")


if __name__ == "__main__":
    main()
