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
import shutil
import sys
from pathlib import Path
from typing import Any

from data_prep.errors import InputError, cli, read_json_input
from data_prep.outputs import check_outputs, write_text_atomic

__all__ = ["main", "read_references", "score"]

METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def read_references(path: Path, split: str) -> dict[str, list[str]]:
    """Reference captions by image id (as a string), from a COCO annotation or a Karpathy split file."""
    data = read_json_input(path, "caption annotations (COCO or Karpathy layout)")
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        refs: dict[str, list[str]] = {}
        for i, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
                raise InputError(f"{path}: annotations[{i}] has no image_id and caption")
            refs.setdefault(str(ann["image_id"]), []).append(ann["caption"])
        return refs
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        images = [im for im in data["images"] if im.get("split", split) == split]
        return {str(im.get("cocoid", im.get("filename"))): [s["raw"] for s in im.get("sentences", [])]
                for im in images}
    raise InputError(f"{path}: neither a COCO annotation file (annotations[].image_id, caption) nor a Karpathy split "
                     "file (images[].sentences[].raw)")


def read_predictions(path: Path) -> dict[str, str]:
    data = read_json_input(path, "caption predictions (COCO result file)")
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a COCO result list [{{image_id, caption}}, ...]")
    predictions: dict[str, str] = {}
    for i, row in enumerate(data):
        if not isinstance(row, dict) or "image_id" not in row or not isinstance(row.get("caption"), str):
            raise InputError(f"{path}: entry {i} has no image_id and caption")
        image = str(row["image_id"])
        if image in predictions:
            raise InputError(f"{path}: image {image} has two captions (entries {i} and an earlier one)")
        predictions[image] = row["caption"]
    return predictions


def score(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, Any]:
    """pycocoevalcap's metrics of ``predictions`` against ``references`` (every predicted image must have some)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if shutil.which("java") is None:
        raise InputError("pycocoevalcap's PTB tokenizer and METEOR need Java, and no java is on the PATH: install a "
                         "JRE (e.g. apt-get install default-jre-headless)")
    tokenizer = PTBTokenizer()
    res = tokenizer.tokenize({i: [{"caption": c}] for i, c in predictions.items()})
    gts = tokenizer.tokenize({i: [{"caption": c} for c in references[i]] for i in predictions})
    metrics: dict[str, Any] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    metrics.update({f"Bleu_{n + 1}": float(b) for n, b in enumerate(bleu)})
    for name, scorer in (("METEOR", Meteor()), ("ROUGE_L", Rouge()), ("CIDEr", Cider())):
        metrics[name] = float(scorer.compute_score(gts, res)[0])
    return {**metrics, "images": len(predictions)}


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
