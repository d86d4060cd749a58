"""``python -m query_generation.generate``: synthetic queries for page images, written by a VLM.

For every page of the store (or of ``--pages``), the prompt file's chat message (the page image and the
instruction) goes to the chosen backend; the answer is parsed (:mod:`query_generation.parse`) and each query
becomes one JSON line: ``page_id``, ``doc_id``, ``query``, ``kind``, ``backend``, ``model``, ``prompt`` (file name
and hash), ``seed``. A page that yields no query (unknown id, undecodable image, an answer without queries,
a request the server refused) goes to the failures file with the reason and, for answers, the raw text.
Problems of the whole run stop it with one ``error:`` line and exit status 2 (docs/ERRORS.md): contradicting
flags, a prompt file without its slots, a model without a chat template, an unreachable server, a corrupt page
store, a ``--pages`` list that shares no page with the store, a full disk (every complete page is kept).

Resumable and shardable: output is appended and fsynced per batch; re-running the same command after any
interruption (even ``kill -9``) skips finished pages and ends with the same file as an uninterrupted run
(byte-identical with greedy decoding or a fixed seed). ``--num_shards K --shard_index I`` take a contiguous
range of fixed batches, so ``cat`` of the K outputs in shard order equals the unsharded output (same
``--batch_size``). One process per GPU, each with its shard, is the data-parallel layout
(``shell/render_and_generate.sh --gpus N``). The settings that decide the records are recorded beside the journal
(:mod:`query_generation.provenance`); resuming it with other settings is refused.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_prep.errors import InputError, cli, stop_on_sigterm
from data_prep.failures import FailureLog
from data_prep.flags import non_negative_float, non_negative_int, positive_int
from data_prep.images import ImageDecodeError
from data_prep.outputs import check_outputs, check_settings, record_settings
from data_prep.store import PageStore, UnknownPageError
from query_generation.generator_args import add_generator_arguments, generator_options
from query_generation.generators import GENERATORS, QueryGenerator, Decoding, Request, clip, make_generator
from query_generation.journal import QueryJournal
from query_generation.parse import QUERIES_SCHEMA, ParseError, parse_queries
from query_generation.prompt import DEFAULT_QUERIES_PROMPT, GENERATION_SLOTS, PromptFile
from query_generation.provenance import generation_settings, has_output, local_model, settings_path
from query_generation.work import Page, list_pages, load_image, make_batches, page_seed, shard_batches

DEFAULT_BATCH = {"transformers": 4, "vllm": 256, "openai": 64}
# a failure record quotes at most this much of its reason and of each raw answer
MAX_REASON_CHARS = 2000
MAX_RAW_CHARS = 20_000


class Run:
    """One generation run: settings, prompt, store, output journal and failures log."""

    def __init__(self, args: argparse.Namespace, prompt: PromptFile, store: PageStore, journal: QueryJournal,
                 flog: FailureLog) -> None:
        self.args, self.prompt, self.store, self.journal, self.flog = args, prompt, store, journal, flog
        self.decoding = Decoding(args.max_new_tokens, args.temperature, args.samples_per_page,
                                 None if args.no_structured_output else QUERIES_SCHEMA)

    def is_done(self, page: Page) -> bool:
        return page.id in self.journal.done or page.id in self.flog.failed_ids

    def fail(self, page: Page, reason: str, raw: list[str] | None = None) -> None:
        """Record the page as failed (once: a resumed run meets again the pages it could not read); the reason and
        the raw answers are clipped, so that a runaway answer cannot fill the failures file."""
        if page.id in self.flog.failed_ids:
            return
        extra = {"raw": [clip(text, MAX_RAW_CHARS) for text in raw]} if raw is not None else None
        self.flog.add(clip(reason, MAX_REASON_CHARS), stage="generate", doc=page.doc_id,
                      source=page.source or str(self.args.store), page=page.page, page_id=page.id, extra=extra)

    def request(self, page: Page) -> Request | None:
        """The page's chat request, or None (failure recorded) when its image cannot be read."""
        try:
            image, url = load_image(self.store, page.id, self.args.max_pixels)
        except (UnknownPageError, ImageDecodeError) as err:
            self.fail(page, str(err))
            return None
        messages = self.prompt.messages(url, num_queries=self.args.queries_per_page)
        return Request(page.id, messages, image, page_seed(self.args.seed, page.id))

    def records(self, page: Page, texts: list[str]) -> list[dict[str, Any]]:
        """The page's query records from its sampled answers; failure recorded when none parses."""
        out, errors = [], []
        for text in texts:
            try:
                queries = parse_queries(text, self.args.queries_per_page)
            except ParseError as err:
                errors.append(str(err))
                continue
            out.extend({"page_id": page.id, "doc_id": page.doc_id, "query": q.text, "kind": q.kind,
                        "backend": self.args.backend, "model": self.args.model, "prompt": self.prompt.ident,
                        "seed": self.args.seed} for q in queries)
        if not out:
            self.fail(page, f"no queries in the model's answer: {errors[0] if errors else 'no answer'}", texts)
        return out

    def run_batch(self, backend: QueryGenerator, batch: list[Page]) -> None:
        """Generate a batch (all its pages, for identical batched decoding), write the pages not yet done."""
        pages, requests = [], []
        for page in batch:
            request = self.request(page)
            if request is not None:
                pages.append(page)
                requests.append(request)
        if not requests:
            return
        records = []
        for page, reply in zip(pages, backend.generate(requests, self.decoding)):
            if self.is_done(page):
                continue
            if reply.error is not None:
                self.fail(page, reply.error)
            else:
                records.extend(self.records(page, reply.texts))
        self.journal.append(records)


def check_args(args: argparse.Namespace, out: Path, failures: Path) -> None:
    """Refuse flags that cannot work together and outputs that would overwrite an input or each other (the
    failures log on the journal, say), before anything is read or loaded (argparse checks each number)."""
    if args.samples_per_page > 1 and args.temperature <= 0:
        raise InputError("--samples_per_page > 1 needs --temperature > 0 (greedy samples would be identical)")
    if args.shard_index >= args.num_shards:
        raise InputError(f"--shard_index must be in [0, --num_shards), got --shard_index {args.shard_index} with "
                         f"--num_shards {args.num_shards} (shards are numbered from 0)")
    check_outputs({"--out": out, "--failures": failures, "settings record": settings_path(out)},
                  {"--store": args.store, "--pages": args.pages, "--prompt": args.prompt,
                   "--model": local_model(args.model)})


def check_pages(pages: list[Page], store: PageStore, pages_path: str | None) -> None:
    """A page list that shares no page with the store names the wrong store (pages that render failed on are
    missing from the store, and each is a failure of its own)."""
    if pages_path is not None and pages and not any(page.id in store for page in pages):
        raise InputError(f"{pages_path}: none of its {len(pages)} pages is in page store {store.path} (first: "
                         f"{pages[0].id!r}); give the store rendered from this page list")


def generate(args: argparse.Namespace, backend: QueryGenerator | None = None) -> dict[str, int]:
    """Run (or resume) generation over this shard's pages; returns the final counts."""
    out = Path(args.out)
    failures = Path(args.failures) if args.failures else out.with_name(out.stem + ".failures.jsonl")
    check_args(args, out, failures)
    prompt = PromptFile.load(args.prompt or DEFAULT_QUERIES_PROMPT, GENERATION_SLOTS)
    store = PageStore(args.store)
    listed = list_pages(store, args.pages)
    check_pages(listed, store, args.pages)
    batch_size = args.batch_size or DEFAULT_BATCH[args.backend]
    batches = shard_batches(make_batches(listed, batch_size), args.num_shards, args.shard_index)
    settings = generation_settings(args, prompt.ident, batch_size)
    check_settings(settings_path(out), settings, has_output(out, failures), f"queries file {out}")
    with QueryJournal(out) as journal, FailureLog(failures) as flog:
        record_settings(settings_path(out), settings)
        run = Run(args, prompt, store, journal, flog)
        pages = [page for batch in batches for page in batch]
        todo = [batch for batch in batches if not all(run.is_done(page) for page in batch)]
        before = sum(run.is_done(page) for page in pages)
        if todo:
            backend = backend or make_generator(args.backend, args.model, generator_options(args))
            try:
                with tqdm(total=len(pages), initial=before, desc="generate", unit="page") as bar:
                    for batch in todo:
                        left = sum(not run.is_done(page) for page in batch)
                        run.run_batch(backend, batch)
                        bar.update(left)
            finally:
                backend.close()
        ids = {page.id for page in pages}
        with_queries, failed = len(ids & journal.done), len(ids & flog.failed_ids)
    print(f"generate: {len(ids)} pages seen = {with_queries} pages with queries + {failed} pages failed "
          f"({before} were done before this run); {journal.records} queries in {out}, failures in {failures}")
    if with_queries + failed != len(ids):
        raise RuntimeError(f"accounting error: {with_queries} + {failed} != {len(ids)} pages")
    return {"pages": len(ids), "with_queries": with_queries, "failed": failed, "queries": journal.records}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m query_generation.generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    io = ap.add_argument_group("input and output")
    io.add_argument("--store", required=True, help="page store (directory of shards, or one .h5 file)")
    io.add_argument("--pages", help="pages.jsonl: generate for these pages, in this order, with their doc ids "
                    "(default: every page of the store; doc id = page id up to its last '/')")
    io.add_argument("--out", required=True, help="queries JSONL (appended; re-run the same command to resume)")
    io.add_argument("--failures", help="failures JSONL (default: OUT without .jsonl + .failures.jsonl)")
    io.add_argument("--prompt", help=f"prompt file with {{image}} and {{num_queries}} slots "
                    f"(default: the packaged {DEFAULT_QUERIES_PROMPT.name})")
    model = ap.add_argument_group("model and decoding")
    model.add_argument("--backend", choices=GENERATORS, default="vllm", help="generation backend (default vllm)")
    model.add_argument("--model", required=True, help="checkpoint directory or hub id (vllm, transformers), "
                       "or the served model name (openai)")
    model.add_argument("--queries_per_page", type=positive_int, default=3,
                       help="queries asked for per page (default 3)")
    model.add_argument("--samples_per_page", type=positive_int, default=1,
                       help="answers sampled per page (vLLM/OpenAI n, transformers num_return_sequences; "
                       "needs --temperature > 0 when > 1; default 1)")
    model.add_argument("--max_new_tokens", type=positive_int, default=512,
                       help="token budget of an answer (default 512)")
    model.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy (default 0)")
    model.add_argument("--seed", type=int, default=0, help="run seed; each page's seed derives from it and its id")
    model.add_argument("--max_pixels", type=positive_int, help="downscale page images to at most this many pixels")
    model.add_argument("--no_structured_output", action="store_true",
                       help="do not ask vLLM / the server for JSON-schema-constrained output")
    model.add_argument("--batch_size", type=positive_int, help="pages per batch, the unit of writing and of sharding "
                       f"(default: {', '.join(f'{k} {v}' for k, v in DEFAULT_BATCH.items())}); keep it fixed "
                       "across the shards and resumptions of a run")
    shard = ap.add_argument_group("sharding (one process per GPU or per slurm task)")
    shard.add_argument("--num_shards", type=positive_int, default=1, help="number of shards (default 1)")
    shard.add_argument("--shard_index", type=non_negative_int, default=0,
                       help="this process's shard, 0-based (default 0)")
    add_generator_arguments(ap)
    return ap


@cli
def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    stop_on_sigterm()
    generate(args)


if __name__ == "__main__":
    main()
