"""CLI: image<->text retrieval Recall@K on Karpathy splits (Flickr30K, COCO), sharded like eval.retrieval.

Data: the Karpathy split JSON as published (``dataset_flickr30k.json``, ``dataset_coco.json``):
``{"images": [{"filename", "filepath"?, "split", "sentences": [{"raw", ...}, ...]}, ...]}``; an image's file is
``<image-root>/<filepath>/<filename>`` (``filepath`` is present for COCO only). Or a caption text file in the
clip_benchmark / InternVL layout (``flickr30k_test_karpathy.txt``, the Chinese ``flickr30k_cn_test.txt`` of
Flickr30K-CN): a header line, then one ``<image>.jpg,<caption>`` line per caption (commas inside a caption are kept;
every line belongs to the evaluated split). Captions in any language go to the model's own tokenizer.

Metrics, with several captions per image:

* text->image ``t2i_recall_at_k``: fraction of captions whose image is in their top k images;
* image->text ``i2t_recall_at_k``: fraction of images with at least one of their captions in their top k;
* ``rsum``: the sum of all of them, in percent (the usual summary).

Captions are the queries and images the pages, so the model's asymmetric score (MaxSim of caption tokens
over image tokens, or the dense dot) is used in both directions. Each rank encodes a shard of the captions
(gathered) and scores a shard of the images chunk by chunk: text->image keeps a running top-k merged across
ranks; image->text ranks all captions for the rank's own images from each score chunk, then gathers.

Ties are broken deterministically, on every machine:

* image->text: captions with the same score rank by caption index, lower first (the order of the JSON).
  Captions with identical text (COCO and Flickr30K have some) are encoded and scored once and share that score
  row, so they tie exactly by construction, never by the luck of floating-point rounding;
* text->image: images with the same score rank as trec_eval orders equal scores (see :mod:`eval.topk`).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from PIL import Image
from torch import Tensor

from data_prep.errors import InputError, MissingInputError, cli, read_json_input
from data_prep.flags import positive_float, positive_int
from data_prep.images import ImageDecodeError
from data_prep.outputs import check_outputs, write_text_atomic
from eval.engine import Encoder, ScoringSettings, encode_sharded_queries, score_shard
from eval.metrics import parse_k
from eval.topk import select_topk
from retriever.model.saved import add_model_arguments, checkpoint_inputs, load_encoder_from_args
from retriever.process_group import RankInfo, joined_process_group
from retriever.scoring import add_score_dtype_argument, score_dtype

__all__ = ["KarpathySplit", "evaluate_image_text", "load_caption_txt", "load_karpathy", "load_split", "main",
           "unique_texts"]

logger = logging.getLogger(__name__)


@dataclass
class KarpathySplit:
    """Images of one split with their captions; ``caption_image[c]`` is caption c's image index."""

    image_paths: list[Path]
    captions: list[str]
    caption_image: list[int]

    def load_images(self, positions: Sequence[int]) -> list[Image.Image]:
        """Decode images by position; a missing or broken file raises naming it."""
        images = []
        for p in positions:
            try:
                with Image.open(self.image_paths[p]) as img:
                    images.append(img.convert("RGB"))
            except FileNotFoundError:
                raise MissingInputError(f"image {p} ({self.image_paths[p]}) does not exist; check --image_root") \
                    from None
            except OSError as err:
                raise ImageDecodeError(f"image {p} ({self.image_paths[p]}): {err}") from err
        return images


def load_karpathy(json_path: str | Path, image_root: str | Path, split: str = "test") -> KarpathySplit:
    """Read one split of a Karpathy JSON; errors name the file and the image entry."""
    data = read_json_input(json_path, "Karpathy split JSON")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(f"{json_path}: expected an object with an 'images' list (Karpathy split format)")
    paths, captions, owner = [], [], []
    for n, entry in enumerate(data["images"]):
        if entry.get("split") != split:
            continue
        try:
            sentences = [s["raw"] for s in entry["sentences"]]
            path = Path(image_root) / entry.get("filepath", "") / entry["filename"]
        except (KeyError, TypeError) as err:
            raise InputError(f"{json_path}: images[{n}] lacks {err} (needs filename and sentences[].raw)") from None
        if not sentences:
            raise InputError(f"{json_path}: images[{n}] ({entry['filename']}) has no sentences")
        captions.extend(sentences)
        owner.extend([len(paths)] * len(sentences))
        paths.append(path)
    if not paths:
        raise InputError(f"{json_path}: no images in split {split!r}")
    return KarpathySplit(paths, captions, owner)


def load_caption_txt(txt_path: str | Path, image_root: str | Path) -> KarpathySplit:
    """Read a clip_benchmark / InternVL caption file (header, then ``<image>.jpg,<caption>`` lines)."""
    try:
        lines = Path(txt_path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise InputError(f"{txt_path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    paths: dict[str, int] = {}
    captions, owner = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        image, sep, caption = line.strip().partition(".jpg,")
        if not sep or not caption.strip():
            raise InputError(f"{txt_path}: line {number}: expected '<image>.jpg,<caption>', got {line[:80]!r}")
        owner.append(paths.setdefault(image + ".jpg", len(paths)))
        captions.append(caption.strip())
    if not captions:
        raise InputError(f"{txt_path}: no caption lines after the header")
    return KarpathySplit([Path(image_root) / name for name in paths], captions, owner)


def load_split(path: str | Path, image_root: str | Path, split: str) -> KarpathySplit:
    """A Karpathy JSON split, or a caption text file (``.txt``)."""
    return load_caption_txt(path, image_root) if Path(path).suffix == ".txt" else load_karpathy(path, image_root,
                                                                                                  split)


def unique_texts(texts: Sequence[str]) -> tuple[list[str], list[int]]:
    """The distinct texts in first-seen order, and for each input text the position of its distinct text."""
    position: dict[str, int] = {}
    rows = [position.setdefault(t, len(position)) for t in texts]
    return list(position), rows


class _ImageToText:
    """Collects, for the rank's own images, the top-k caption indices from each score chunk.

    ``caption_row[c]`` is the score row of caption c (captions with identical text share one row)."""

    def __init__(self, k: int, caption_row: Sequence[int]) -> None:
        self.k = k
        self.caption_row = torch.tensor(list(caption_row), dtype=torch.long)
        self.rows: dict[int, list[int]] = {}

    def __call__(self, scores: Tensor, span: range) -> None:
        per_image = scores.detach().float().cpu()[self.caption_row].T  # [C, Ncap]
        captions = torch.arange(per_image.shape[1]).expand_as(per_image)
        _, top, _ = select_topk(per_image, captions, min(self.k, per_image.shape[1]))
        self.rows.update({image: row for image, row in zip(span, top.tolist())})

    def gather(self, info: RankInfo) -> dict[int, list[int]]:
        if info.world == 1:
            return self.rows
        parts: list[Any] = [None] * info.world
        dist.all_gather_object(parts, self.rows)
        return {image: row for part in parts for image, row in part.items()}


def evaluate_image_text(encoder: Encoder, n_images: int, load_images: Callable[[Sequence[int]], list[Image.Image]],
                        captions: Sequence[str], caption_image: Sequence[int], info: RankInfo,
                        k_values: Sequence[int] = (1, 5, 10),
                        settings: ScoringSettings = ScoringSettings()) -> dict[str, float]:
    """Recall@k in both directions and ``rsum``; every rank returns the same values. ``settings.chunk_pages`` is
    the number of images encoded and scored at a time (``--chunk_images``); nothing is resumable here."""
    k = max(k_values)
    texts, caption_row = unique_texts(captions)
    caption_emb = encode_sharded_queries(encoder, texts, settings.batch_size, info)
    i2t = _ImageToText(k, caption_row)
    image_ids = [str(i) for i in range(n_images)]
    t2i_by_text = score_shard(encoder, caption_emb, image_ids, load_images, k, info, settings, on_chunk=i2t)
    t2i = [t2i_by_text[row] for row in caption_row]
    ranked_captions = i2t.gather(info)
    owner = torch.tensor(list(caption_image))
    metrics: dict[str, float] = {}
    for kk in sorted(k_values):
        hits = [caption_image[c] in [pos for pos, _ in row[:kk]] for c, row in enumerate(t2i)]
        metrics[f"t2i_recall_at_{kk}"] = sum(hits) / len(hits)
        image_hits = [bool((owner[ranked_captions[i][:kk]] == i).any()) for i in range(n_images)]
        metrics[f"i2t_recall_at_{kk}"] = sum(image_hits) / n_images
    metrics["rsum"] = 100 * sum(metrics.values())
    return metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval.image_text", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--karpathy_json", required=True, type=Path,
                   help="dataset_flickr30k.json / dataset_coco.json, or a caption .txt (clip_benchmark layout: "
                        "flickr30k_test_karpathy.txt, Flickr30K-CN's flickr30k_cn_test.txt)")
    p.add_argument("--image_root", required=True, type=Path, help="folder the image file names are relative to")
    p.add_argument("--split", default="test", help="Karpathy split (default: test)")
    p.add_argument("--k", type=parse_k, default=[1, 5, 10], help="recall cutoffs (default 1,5,10)")
    p.add_argument("--out", type=Path, default=None, help="write the metrics JSON here (default: stdout only)")
    p.add_argument("--batch_size", type=positive_int, default=8, help="encoder batch size")
    p.add_argument("--chunk_images", type=positive_int, default=256, help="images encoded and scored per chunk")
    add_score_dtype_argument(p)
    p.add_argument("--timeout", type=positive_float, default=1800,
                   help="seconds a collective waits for the other ranks")
    return p.parse_args(argv)


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_outputs({"--out": args.out},
                  {"--karpathy_json": args.karpathy_json, **checkpoint_inputs("--model", args.model)})
    with joined_process_group(timedelta(seconds=args.timeout)) as info:
        data = load_split(args.karpathy_json, args.image_root, args.split)
        encoder = load_encoder_from_args(args, info.device)
        settings = ScoringSettings(args.batch_size, args.chunk_images, info.device,
                                   score_dtype(args.score_dtype, info.device))
        metrics = evaluate_image_text(encoder, len(data.image_paths), data.load_images, data.captions,
                                      data.caption_image, info, args.k, settings)
        if info.is_main:
            text = json.dumps({"split": args.split, "images": len(data.image_paths), "captions": len(data.captions),
                               **metrics}, indent=2)
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(args.out, text + "\n")
            print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
