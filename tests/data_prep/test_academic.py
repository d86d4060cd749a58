"""Academic-set converters: a tiny fixture per set in its published layout (original JSON + images, and the
Hugging Face save_to_disk / parquet layouts), converted into a page store and pairs JSONL."""
from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pytest
from PIL import Image

from data_prep.academic import FormatError, convert
from data_prep.store import PageStore


def _img(color: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buf, fmt)
    return buf.getvalue()


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
    return path


def _pairs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run(tmp_path: Path, set_name: str, src: Path, split: str | None = None) -> tuple[list[dict], PageStore]:
    out = tmp_path / "out"
    convert(set_name, src, out / "store", out / f"{set_name}.jsonl", split=split)
    return _pairs(out / f"{set_name}.jsonl"), PageStore(out / "store")


def _check_images(pairs: list[dict], store: PageStore, expected: dict[str, bytes]) -> None:
    assert set(store.ids()) == set(expected)
    for pid, data in expected.items():
        assert store.get_bytes(pid) == data  # original bytes, not re-encoded
    for p in pairs:
        assert p["neg"] == [] and all(pid in store for pid in p["pos"])


def test_arxivqa_original_jsonl(tmp_path):
    root = tmp_path / "ArxivQA"
    a, b = _img((255, 0, 0), "JPEG"), _img((0, 255, 0), "JPEG")
    _write(root / "images" / "2401.00001_fig1.jpg", a)
    _write(root / "images" / "2401.00002_fig3.jpg", b)
    recs = [{"id": "q1", "image": "images/2401.00001_fig1.jpg", "options": ["A. cats", "B. dogs"],
             "question": "Which animal is plotted?", "label": "B", "rationale": "..."},
            {"id": "q2", "image": "images/2401.00002_fig3.jpg", "options": ["A. up", "B. down"],
             "question": "Trend?", "label": "A", "rationale": "..."}]
    _write(root / "arxivqa.jsonl", "".join(json.dumps(r) + "\n" for r in recs))
    pairs, store = _run(tmp_path, "arxivqa", root)
    assert [(p["query"], p["answer"], p["pos"], p["source"]) for p in pairs] == [
        ("Which animal is plotted?", "B. dogs", ["arxivqa/2401.00001_fig1"], "arxivqa"),
        ("Trend?", "A. up", ["arxivqa/2401.00002_fig3"], "arxivqa")]
    _check_images(pairs, store, {"arxivqa/2401.00001_fig1": a, "arxivqa/2401.00002_fig3": b})
    assert store.meta("arxivqa/2401.00001_fig1")["format"] == "jpeg"


def test_chartqa_original_and_parquet(tmp_path):
    root = tmp_path / "ChartQA Dataset"
    a, b = _img((1, 2, 3)), _img((4, 5, 6))
    _write(root / "val" / "png" / "chart_a.png", a)
    _write(root / "val" / "png" / "chart_b.png", b)
    _write(root / "val" / "val_human.json", json.dumps([{"imgname": "chart_a.png", "query": "Max?", "label": "7"}]))
    _write(root / "val" / "val_augmented.json", json.dumps([
        {"imgname": "chart_b.png", "query": "Min?", "label": "1"},
        {"imgname": "chart_a.png", "query": "Sum?", "label": "12"}]))
    pairs, store = _run(tmp_path / "orig", "chartqa", root, split="val")
    assert [(p["query"], p["answer"], p["pos"]) for p in pairs] == [
        ("Min?", "1", ["chartqa/chart_b"]), ("Sum?", "12", ["chartqa/chart_a"]), ("Max?", "7", ["chartqa/chart_a"])]
    _check_images(pairs, store, {"chartqa/chart_a": a, "chartqa/chart_b": b})

    hf = datasets.Dataset.from_dict(
        {"image": [{"bytes": a, "path": None}, {"bytes": a, "path": None}], "query": ["Max?", "Sum?"],
         "label": [["7"], ["12"]], "human_or_machine": [0, 1]},
        features=datasets.Features({"image": datasets.Image(), "query": datasets.Value("string"),
                                    "label": datasets.List(datasets.Value("string")),
                                    "human_or_machine": datasets.ClassLabel(names=["human", "machine"])}))
    (tmp_path / "hf" / "data").mkdir(parents=True)
    hf.to_parquet(str(tmp_path / "hf" / "data" / "val-00000-of-00001.parquet"))
    pairs, store = _run(tmp_path / "hf_out", "chartqa", tmp_path / "hf", split="val")
    assert [p["answer"] for p in pairs] == ["7", "12"] and len(store) == 1  # same chart stored once
    assert pairs[0]["pos"] == pairs[1]["pos"] and store.get_bytes(pairs[0]["pos"][0]) == a


def test_docvqa_original_and_save_to_disk(tmp_path):
    root = tmp_path / "docvqa"
    a, b = _img((9, 9, 9)), _img((8, 8, 8))
    _write(root / "documents" / "ffbf0023_4.png", a)
    _write(root / "documents" / "nkbl0226_1.png", b)
    data = [{"questionId": 337, "question": "What is the date?", "question_types": ["form"],
             "image": "documents/ffbf0023_4.png", "docId": 279, "ucsf_document_id": "ffbf0023",
             "ucsf_document_page_no": "4", "answers": ["1/8/93", "January 8, 1993"], "data_split": "val"},
            {"questionId": 338, "question": "Who signed?", "image": "documents/nkbl0226_1.png", "docId": 280,
             "answers": ["J. Doe"]}]
    _write(root / "val_v1.0.json", json.dumps({"dataset_name": "docvqa", "dataset_split": "val", "data": data}))
    pairs, store = _run(tmp_path / "orig", "docvqa", root, split="val")
    assert [(p["qid"], p["answer"], p["pos"], p["doc_id"]) for p in pairs] == [
        ("337", "1/8/93", ["docvqa/ffbf0023_4"], "docvqa/279"), ("338", "J. Doe", ["docvqa/nkbl0226_1"], "docvqa/280")]
    _check_images(pairs, store, {"docvqa/ffbf0023_4": a, "docvqa/nkbl0226_1": b})

    hf = datasets.DatasetDict({"validation": datasets.Dataset.from_dict(
        {"questionId": ["337"], "question": ["What is the date?"], "image": [{"bytes": a, "path": None}],
         "docId": [279], "answers": [["1/8/93"]]},
        features=datasets.Features({"questionId": datasets.Value("string"), "question": datasets.Value("string"),
                                    "image": datasets.Image(), "docId": datasets.Value("int64"),
                                    "answers": datasets.List(datasets.Value("string"))}))})
    hf.save_to_disk(str(tmp_path / "hf"))
    pairs, store = _run(tmp_path / "hf_out", "docvqa", tmp_path / "hf", split="validation")
    assert pairs[0]["doc_id"] == "docvqa/279" and store.get_bytes(pairs[0]["pos"][0]) == a
    with pytest.raises(FormatError, match="split 'train' not found"):
        convert("docvqa", tmp_path / "hf", tmp_path / "x" / "s", tmp_path / "x" / "p.jsonl", split="train")


def test_infographicvqa_original(tmp_path):
    root = tmp_path / "infovqa"
    a = _img((7, 7, 7), "JPEG")
    _write(root / "infographicsvqa_images" / "20471.jpeg", a)
    data = [{"questionId": 98313, "question": "What percentage?", "image_local_name": "20471.jpeg",
             "image_url": "https://example.org/x.jpg", "ocr_output_file": "20471.json", "answers": ["12%"],
             "data_split": "train"}]
    _write(root / "infographicsVQA_train_v1.0.json", json.dumps({"dataset_name": "infographicVQA", "data": data}))
    pairs, store = _run(tmp_path, "infographicvqa", root, split="train")
    assert pairs == [{"query": "What percentage?", "answer": "12%", "pos": ["infographicvqa/20471"], "neg": [],
                      "source": "infographicvqa", "doc_id": "infographicvqa/20471", "qid": "98313"}]
    _check_images(pairs, store, {"infographicvqa/20471": a})


def test_plotqa_original(tmp_path):
    root = tmp_path / "PlotQA"
    a, b = _img((3, 3, 3)), _img((4, 4, 4))
    _write(root / "test" / "png" / "0.png", a)
    _write(root / "test" / "png" / "1.png", b)
    qa = {"qa_pairs": [
        {"image_index": 0, "question_string": "What is the title?", "answer": "GDP", "answer_bbox": [],
         "template": "structural", "type": "dot_line", "question_id": 0},
        {"image_index": 1, "question_string": "Max value?", "answer": 42.5, "question_id": 1}]}
    _write(root / "test" / "qa_pairs_V1.json", json.dumps(qa))
    pairs, store = _run(tmp_path, "plotqa", root, split="test")
    assert [(p["query"], p["answer"], p["pos"]) for p in pairs] == [
        ("What is the title?", "GDP", ["plotqa/0"]), ("Max value?", "42.5", ["plotqa/1"])]
    _check_images(pairs, store, {"plotqa/0": a, "plotqa/1": b})


def test_slidevqa_original_and_parquet(tmp_path):
    root = tmp_path / "SlideVQA"
    slides = {i: _img((i, 0, 0), "JPEG") for i in range(1, 21)}
    urls = [f"https://image.slidesharecdn.com/deck/95/deck-{i}-1024.jpg" for i in range(1, 21)]
    for i in (2, 5):
        _write(root / "images" / "test" / "my-deck" / f"deck-{i}-1024.jpg", slides[i])
    rec = {"deck_name": "my-deck", "deck_url": "https://x", "image_urls": urls, "qa_id": 11,
           "question": "How many?", "answer": "3", "arithmetic_expression": "None", "evidence_pages": [2, 5],
           "reasoning_type": "multi-hop", "answer_type": "number"}
    _write(root / "annotations" / "qa" / "test.jsonl", json.dumps(rec) + "\n")
    pairs, store = _run(tmp_path / "orig", "slidevqa", root, split="test")
    assert pairs[0]["pos"] == ["slidevqa/my-deck/2", "slidevqa/my-deck/5"] and pairs[0]["doc_id"] == "slidevqa/my-deck"
    _check_images(pairs, store, {"slidevqa/my-deck/2": slides[2], "slidevqa/my-deck/5": slides[5]})

    cols = {f"image_{i}": [{"bytes": slides[i], "path": None}] for i in range(1, 21)}
    feats = {f"image_{i}": datasets.Image() for i in range(1, 21)}
    hf = datasets.Dataset.from_dict(
        {"deck_name": ["my-deck"], "qa_id": [11], "question": ["How many?"], "answer": ["3"],
         "evidence_pages": [[5]], **cols},
        features=datasets.Features({"deck_name": datasets.Value("string"), "qa_id": datasets.Value("int64"),
                                    "question": datasets.Value("string"), "answer": datasets.Value("string"),
                                    "evidence_pages": datasets.List(datasets.Value("int64")), **feats}))
    (tmp_path / "hf").mkdir()
    hf.to_parquet(str(tmp_path / "hf" / "test-00000.parquet"))
    pairs, store = _run(tmp_path / "hf_out", "slidevqa", tmp_path / "hf", split="test")
    assert pairs[0]["pos"] == ["slidevqa/my-deck/5"] and store.get_bytes("slidevqa/my-deck/5") == slides[5]


def test_missing_image_is_named_and_committed_pages_survive(tmp_path):
    root = tmp_path / "PlotQA"
    _write(root / "png" / "0.png", _img((1, 1, 1)))
    _write(root / "qa_pairs_V1.json", json.dumps({"qa_pairs": [
        {"image_index": 0, "question_string": "a?", "answer": 1},
        {"image_index": 7, "question_string": "b?", "answer": 2}]}))
    out = tmp_path / "out"
    with pytest.raises(FormatError, match=r"qa_pairs_V1.json: qa_pairs\[1\]: image file not found: .*png/7.png"):
        convert("plotqa", root, out / "store", out / "p.jsonl")
    assert PageStore(out / "store").ids() == ["plotqa/0"]  # written before the error: kept
    assert not (out / "p.jsonl").exists()
    with pytest.raises(FormatError, match="missing column 'question_string'"):
        _write(root / "qa_pairs_V1.json", json.dumps({"qa_pairs": [{"image_index": 0, "question": "a?"}]}))
        convert("plotqa", root, out / "store", out / "p.jsonl")
