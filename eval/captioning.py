"""CLI: captioning metrics with pycocoevalcap: ``python -m eval.captioning --predictions PRED.json --annotations ANN.json
--out DIR [--split test]``.

PRED.json is a COCO result file (``[{"image_id", "caption"}, ...]``, one caption per image). ANN.json holds the
reference captions, in the COCO annotation layout (``images`` and ``annotations`` with ``image_id`` / ``caption``:
COCO, NoCaps val) or the Karpathy split layout (``images`` with ``sentences[].raw``, ``split``; ids are ``cocoid`` or
the file name: COCO and Flickr30K Karpathy, where ``--split`` picks the images). Captions are tokenized with
pycocoevalcap's PTB tokenizer, and BLEU-1..4, METEOR, ROUGE-L and CIDEr are pycocoevalcap's scorers on the images
that have a prediction (as ``COCOEvalCap`` does; SPICE is left out: it downloads Stanford models). The PTB tokenizer
and METEOR run Java: without a ``java`` on the PATH the command stops with one line saying so.

Writes ``DIR/metrics.json``: ``Bleu_1`` ... ``Bleu_4``, ``METEOR``, ``ROUGE_L``, ``CIDEr``, ``images``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data_prep.errors import InputError, cli
from data_prep.outputs import check_outputs, write_text_atomic
from eval.caption_metrics import METRICS, read_predictions, read_references, score

__all__ = ["main"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval.captioning", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictions", type=Path, required=True, help="COCO result file: [{image_id, caption}]")
    p.add_argument("--annotations", type=Path, required=True, help="COCO annotation or Karpathy split file")
    p.add_argument("--split", default="test", help="Karpathy layout: which split's images (default: test)")
    p.add_argument("--out", type=Path, required=True, help="output directory (metrics.json)")
    return p.parse_args(argv)


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_outputs({"--out": args.out}, {"--predictions": args.predictions, "--annotations": args.annotations},
                  directories=("--out",))
    predictions, references = read_predictions(args.predictions), read_references(args.annotations, args.split)
    unknown = [i for i in predictions if not references.get(i)]
    if unknown:
        raise InputError(f"{args.predictions}: {len(unknown)} image(s) without reference captions in "
                         f"{args.annotations}: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    metrics = score(predictions, references)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    print(" ".join(f"{m} {metrics[m]:.4f}" for m in METRICS) + f" ({metrics['images']} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
