"""``python -m query_generation.caption``: zero-shot captions of an evaluation set's images, then their metrics.

``--annotations ANN.json`` (COCO annotations: ``images[].id`` / ``file_name``; or a Karpathy split file:
``images[].filename`` / ``filepath``, ``cocoid``, ``split``) names the images, found under ``--image_root``; the
prompt file (``{image}`` slot; default ``prompts/caption.txt``) goes with each image to the chosen backend
(transformers, vLLM, OpenAI-compatible server: the query-generation backends and their flags), and the first line
of the answer is the caption. Captions are appended to ``OUT/captions.jsonl`` per batch (``image_id``, ``caption``);
an image the backend could not caption goes to ``OUT/captions.failures.jsonl`` with the reason. Re-running the same
command resumes; ``--num_shards K --shard_index I`` caption a contiguous slice each (``captions-I-of-K.jsonl``).
Unsharded, it then writes ``OUT/predictions.json`` (COCO result layout) and the metrics of
:mod:`eval.caption_metrics` (``OUT/metrics.json``; pass ``--no_score`` to skip). Images missing from ``--image_root`` stop
the run before any model is loaded, naming them.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from data_prep.errors import InputError, cli, read_json_input, stop_on_sigterm
from data_prep.failures import FailureLog
from data_prep.flags import non_negative_int, positive_int
from data_prep.images import ImageDecodeError
from data_prep.jsonl import iter_jsonl
from data_prep.outputs import JsonlAppender, check_outputs, write_text_atomic
from eval.caption_metrics import read_references, score
from query_generation.generator_args import add_generator_arguments, generator_options
from query_generation.generators import GENERATORS, Decoding, Request, make_generator
from query_generation.prompt import IMAGE_SLOT, PROMPT_DIR, PromptFile
from query_generation.work import image_and_url

DEFAULT_CAPTION_PROMPT = PROMPT_DIR / "caption.txt"


@dataclass(frozen=True)
class CaptionImage:
    image_id: str
    path: Path


def list_images(path: Path, image_root: Path, split: str) -> list[CaptionImage]:
    """The images an annotation file names, in its order."""
    data = read_json_input(path, "caption annotations (COCO or Karpathy layout)")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(f"{path}: no 'images' list (COCO annotations or a Karpathy split file)")
    images = []
    for n, entry in enumerate(data["images"]):
        if "file_name" in entry and "id" in entry:  # COCO layout
            images.append(CaptionImage(str(entry["id"]), image_root / entry["file_name"]))
        elif "filename" in entry:  # Karpathy layout
            if entry.get("split", split) == split:
                images.append(CaptionImage(str(entry.get("cocoid", entry["filename"])),
                                           image_root / entry.get("filepath", "") / entry["filename"]))
        else:
            raise InputError(f"{path}: images[{n}] has neither id + file_name nor filename")
    return images


def caption_of(text: str) -> str:
    """The caption in an answer: its first non-empty line, without surrounding quotes."""
    line = next((line.strip() for line in text.strip().splitlines() if line.strip()), "")
    return line.strip('"').strip()


def caption(args: argparse.Namespace, out: Path, images: list[CaptionImage]) -> None:
    """Caption every image not yet in the journal or the failures log, batch by batch."""
    prompt = PromptFile.load(args.prompt or DEFAULT_CAPTION_PROMPT, (IMAGE_SLOT,))
    done = {r["image_id"] for _, r in iter_jsonl(out)} if out.exists() else set()
    flog = FailureLog(out.with_name(out.name.replace(".jsonl", ".failures.jsonl")))
    todo = [im for im in images if im.image_id not in done and im.image_id not in flog.failed_ids]
    if not todo:
        return
    backend = make_generator(args.backend, args.model, generator_options(args))
    decoding = Decoding(args.max_new_tokens, args.temperature)
    journal = JsonlAppender(out, fsync=True)
    try:
        for start in tqdm(range(0, len(todo), args.batch_size), desc="captions", unit="batch"):
            requests, batch = [], []
            for im in todo[start:start + args.batch_size]:
                try:
                    image, url = image_and_url(im.path.read_bytes(), f"image {im.image_id} ({im.path})",
                                               args.max_pixels)
                except ImageDecodeError as err:
                    flog.add(str(err), stage="caption", doc=im.image_id, source=str(im.path), page_id=im.image_id)
                    continue
                requests.append(Request(im.image_id, prompt.messages(url), image, args.seed))
                batch.append(im)
            for im, reply in zip(batch, backend.generate(requests, decoding) if requests else []):
                text = caption_of(reply.texts[0]) if reply.error is None and reply.texts else ""
                if text:
                    journal.write({"image_id": im.image_id, "caption": text})
                else:
                    flog.add(reply.error or "an empty answer", stage="caption", doc=im.image_id,
                             source=str(im.path), page_id=im.image_id)
    finally:
        journal.close()
        flog.close()
        backend.close()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m query_generation.caption", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotations", type=Path, required=True, help="COCO annotations or a Karpathy split file")
    ap.add_argument("--image_root", type=Path, required=True, help="folder the image file names are relative to")
    ap.add_argument("--split", default="test", help="Karpathy layout: which split (default test)")
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--prompt", help=f"prompt file with an {{image}} slot (default: {DEFAULT_CAPTION_PROMPT.name})")
    ap.add_argument("--backend", choices=GENERATORS, default="vllm", help="generation backend (default vllm)")
    ap.add_argument("--model", required=True, help="checkpoint or served model name")
    ap.add_argument("--max_new_tokens", type=positive_int, default=40, help="token budget of a caption")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max_pixels", type=positive_int, help="downscale images to at most this many pixels")
    ap.add_argument("--batch_size", type=positive_int, default=8, help="images per batch (the unit of writing)")
    ap.add_argument("--num_shards", type=positive_int, default=1)
    ap.add_argument("--shard_index", type=non_negative_int, default=0)
    ap.add_argument("--no_score", action="store_true", help="write the captions only")
    add_generator_arguments(ap)
    return ap


@cli
def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    stop_on_sigterm()
    if args.shard_index >= args.num_shards:
        raise InputError(f"--shard_index {args.shard_index} is not below --num_shards {args.num_shards}")
    check_outputs({"--out": args.out}, {"--annotations": args.annotations, "--image_root": args.image_root},
                  directories=("--out",))
    images = list_images(args.annotations, args.image_root, args.split)
    missing = [im for im in images if not im.path.is_file()]
    if missing:
        raise InputError(f"{args.annotations}: {len(missing)} image(s) missing under {args.image_root}: "
                         + ", ".join(str(im.path) for im in missing[:5]) + (" ..." if len(missing) > 5 else ""))
    size = -(-len(images) // args.num_shards)
    part = images[args.shard_index * size:(args.shard_index + 1) * size]
    name = "captions.jsonl" if args.num_shards == 1 else f"captions-{args.shard_index}-of-{args.num_shards}.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    caption(args, args.out / name, part)
    if args.num_shards > 1 or args.no_score:
        return
    captions = {r["image_id"]: r["caption"] for _, r in iter_jsonl(args.out / name)}
    write_text_atomic(args.out / "predictions.json", json.dumps(  # COCO result layout: numeric ids as numbers
        [{"image_id": int(i) if i.isdigit() else i, "caption": c} for i, c in captions.items()],
        ensure_ascii=False, indent=1) + "\n")
    references = read_references(args.annotations, args.split)
    metrics = score(captions, references)
    write_text_atomic(args.out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
