"""Captioning metrics with pycocoevalcap: reference and prediction files, and the scores (``eval.captioning`` is the
command line; ``query_generation.caption`` scores the captions it writes with it).

References come in the COCO annotation layout (``images`` and ``annotations`` with ``image_id`` / ``caption``: COCO,
NoCaps val) or the Karpathy split layout (``images`` with ``sentences[].raw``, ``split``; ids are ``cocoid`` or the
file name); predictions in the COCO result layout. Captions are tokenized with pycocoevalcap's PTB tokenizer, and
BLEU-1..4, METEOR, ROUGE-L and CIDEr are pycocoevalcap's scorers on the images that have a prediction (as
``COCOEvalCap`` does; SPICE is left out: it downloads Stanford models). The PTB tokenizer and METEOR run Java.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from data_prep.errors import InputError, read_json_input

__all__ = ["METRICS", "read_predictions", "read_references", "score"]

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
