"""query_generation.caption: captions from a backend (an OpenAI-compatible stub) for each image of a COCO annotation
file, resumable, failures recorded, then scored like eval.captioning; missing images are one line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from query_generation.caption import caption_of, main
from tests.helpers.cli import one_error_line
from tests.helpers.openai_stub import StubServer
from tests.helpers.toy_retrieval import page_image

CAPTIONS = {"0.png": "a dog running on the grass", "1.png": "two people walking on a beach",
            "2.png": "a red bus parked on a street"}


def make_set(root: Path) -> Path:
    root.mkdir()
    refs = {0: ["A dog runs across the grass.", "A brown dog on a lawn."], 1: ["Two people walk on the beach."],
            2: ["A red bus is parked on the street.", "A bus next to the curb."]}
    for i in refs:
        page_image(i).save(root / f"{i}.png")
    ann = root / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i}.png"} for i in refs], "annotations": [
        {"image_id": i, "caption": c} for i, caps in refs.items() for c in caps]}))
    return ann


def answer(body: dict) -> str:
    """The stub's caption: looked up from the image's place in the request (the test's own mapping)."""
    url = next(part["image_url"]["url"] for part in body["messages"][0]["content"] if part["type"] == "image_url")
    return f"\"{ANSWERS[url]}\"\nExtra line the caption leaves out."


ANSWERS: dict[str, str] = {}


def test_captions_are_written_resumed_and_scored(tmp_path: Path) -> None:
    from query_generation.work import image_and_url

    ann = make_set(tmp_path / "set")
    for name, text in CAPTIONS.items():
        ANSWERS[image_and_url((tmp_path / "set" / name).read_bytes(), name, None)[1]] = text
    out = tmp_path / "out"
    with StubServer(answer=answer) as stub:
        args = ["--annotations", str(ann), "--image_root", str(tmp_path / "set"), "--out", str(out), "--backend",
                "openai", "--model", "captioner", "--base_url", stub.base_url, "--batch_size", "2"]
        if shutil.which("java") is None:
            args.append("--no_score")
        main(args)
        assert len(stub.bodies) == 3
        main(args)  # resumed: every image is done, nothing is asked again
        assert len(stub.bodies) == 3
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert rows == [{"image_id": str(i), "caption": CAPTIONS[f"{i}.png"]} for i in range(3)]
    if shutil.which("java") is not None:
        predictions = json.loads((out / "predictions.json").read_text())
        assert predictions[0] == {"image_id": 0, "caption": CAPTIONS["0.png"]}
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["images"] == 3 and metrics["CIDEr"] > 0 and 0 < metrics["Bleu_1"] <= 1


def test_missing_images_are_named_before_any_model_loads(tmp_path: Path, capsys) -> None:
    ann = make_set(tmp_path / "set")
    (tmp_path / "set" / "1.png").unlink()
    line = one_error_line(main, ["--annotations", str(ann), "--image_root", str(tmp_path / "set"), "--out",
                                 str(tmp_path / "out"), "--backend", "openai", "--model", "m"], capsys)
    assert line == f"error: {ann}: 1 image(s) missing under {tmp_path / 'set'}: {tmp_path / 'set' / '1.png'}"


@pytest.mark.parametrize("text, want", [("\n  A cat.\nmore", "A cat."), ('"quoted"', "quoted"), ("", "")])
def test_the_caption_is_the_first_line(text: str, want: str) -> None:
    assert caption_of(text) == want
