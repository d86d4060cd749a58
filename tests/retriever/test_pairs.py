"""Training pairs are validated before training: bad lines name the file, the line and the id."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from retriever.page_sources import ImageFolder, PageResolver
from retriever.pairs import PairsError, load_hf_pairs, read_jsonl_pairs, validate_pairs


@pytest.fixture()
def image_root(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8), "white").save(root / name)
    (root / "broken.png").write_bytes(b"not an image")
    return root


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reads_and_validates(tmp_path, image_root):
    path = _write(tmp_path / "train.jsonl", [
        json.dumps({"query": "what", "pos": ["a.png"], "neg": ["b.png", "a.png"]}),
        "",
        json.dumps({"query": "who", "pos": ["c.png"], "answer": "x"}),
    ])
    pairs = read_jsonl_pairs(path)
    assert [p.query for p in pairs] == ["what", "who"]
    assert pairs[0].neg == ("b.png",), "a positive listed as negative is removed"
    validate_pairs(pairs, PageResolver([ImageFolder(image_root)]), path)


def test_unknown_id_names_file_line_and_id(tmp_path, image_root):
    path = _write(tmp_path / "train.jsonl", [
        json.dumps({"query": "what", "pos": ["a.png"]}),
        "",
        json.dumps({"query": "who", "pos": ["c.png"], "neg": ["missing.png"]}),
    ])
    with pytest.raises(PairsError, match=r"train\.jsonl: line 3: unknown page id 'missing\.png'"):
        validate_pairs(read_jsonl_pairs(path), PageResolver([ImageFolder(image_root)]), path)


@pytest.mark.parametrize("line, message", [
    ("{not json", "invalid JSON"),
    (json.dumps({"pos": ["a.png"]}), "'query' must be a non-empty string"),
    (json.dumps({"query": "q", "pos": []}), "'pos' is empty"),
    (json.dumps({"query": "q", "pos": "a.png"}), "'pos' must be a list"),
])
def test_malformed_lines(tmp_path, line, message):
    path = _write(tmp_path / "bad.jsonl", [json.dumps({"query": "ok", "pos": ["a.png"]}), line])
    with pytest.raises(PairsError, match=rf"bad\.jsonl: line 2: .*{message}"):
        read_jsonl_pairs(path)


def test_undecodable_image_names_the_page(image_root):
    with pytest.raises(ValueError, match="broken.png"):
        PageResolver([ImageFolder(image_root)]).get_image("broken.png")


def test_hf_dataset_pairs(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = [Image.new("RGB", (8, 8), color) for color in ("red", "green")]
    ds = datasets.Dataset.from_dict({"query": ["q0", "q1"], "image": images})
    ds = ds.cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "ds"))
    pairs, pages = load_hf_pairs(tmp_path / "ds")
    assert [p.pos for p in pairs] == [("row0",), ("row1",)]
    assert pages.get_image("row1").getpixel((0, 0)) == (0, 128, 0)
