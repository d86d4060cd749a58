"""eval.captioning: our metrics equal pycocoevalcap's scorers called directly on a fixture (COCO and Karpathy
layouts); unknown images are one line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from eval.captioning import main
from tests.helpers.cli import one_error_line

pytest.importorskip("pycocoevalcap")
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's tokenizer and METEOR need Java")

REFERENCES = {
    1: ["A man rides a brown horse on a beach.", "A person riding a horse by the sea.", "Horse and rider on sand."],
    2: ["Two dogs play in the snow.", "A pair of dogs running through snow."],
    3: ["A red bus parked on a city street.", "A bus stopped next to the curb.", "The double decker bus is red."],
}
PREDICTIONS = {1: "a man riding a horse on the beach", 2: "dogs playing in the snow", 3: "a red bus on the street"}


@pytest.fixture(scope="module")
def reference_scores() -> dict:
    """pycocoevalcap called directly: PTB tokenizer, then each scorer."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in refs] for i, refs in REFERENCES.items()})
    res = tok.tokenize({i: [{"caption": c}] for i, c in PREDICTIONS.items()})
    bleu = Bleu(4).compute_score(gts, res, verbose=0)[0]
    return {**{f"Bleu_{n + 1}": b for n, b in enumerate(bleu)}, "METEOR": Meteor().compute_score(gts, res)[0],
            "ROUGE_L": Rouge().compute_score(gts, res)[0], "CIDEr": Cider().compute_score(gts, res)[0]}


def write(tmp_path: Path, karpathy: bool) -> tuple[Path, Path]:
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps([{"image_id": i, "caption": c} for i, c in PREDICTIONS.items()]))
    ann = tmp_path / "ann.json"
    if karpathy:
        ann.write_text(json.dumps({"images": [{"cocoid": i, "split": "test", "sentences": [{"raw": c} for c in refs]}
                                              for i, refs in REFERENCES.items()] +
                                   [{"cocoid": 9, "split": "train", "sentences": [{"raw": "x"}]}]}))
    else:
        ann.write_text(json.dumps({"images": [{"id": i} for i in REFERENCES], "annotations": [
            {"image_id": i, "caption": c} for i, refs in REFERENCES.items() for c in refs]}))
    return pred, ann


@needs_java
@pytest.mark.parametrize("karpathy", [False, True])
def test_metrics_equal_pycocoevalcap(tmp_path: Path, karpathy: bool, reference_scores: dict) -> None:
    pred, ann = write(tmp_path, karpathy)
    assert main(["--predictions", str(pred), "--annotations", str(ann), "--out", str(tmp_path / "out")]) == 0
    got = json.loads((tmp_path / "out" / "metrics.json").read_text())
    want = reference_scores
    assert got["images"] == 3 and set(want) < set(got)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert 0 < got["CIDEr"] and 0 < got["Bleu_4"] < got["Bleu_1"] <= 1


def test_a_prediction_without_references_is_one_line(tmp_path: Path, capsys) -> None:
    pred, ann = write(tmp_path, False)
    pred.write_text(json.dumps([{"image_id": 7, "caption": "x"}, {"image_id": 1, "caption": "y"}]))
    line = one_error_line(main, ["--predictions", str(pred), "--annotations", str(ann), "--out",
                                 str(tmp_path / "out")], capsys)
    assert line == f"error: {pred}: 1 image(s) without reference captions in {ann}: 7"
