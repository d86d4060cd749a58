"""Image<->text Recall@K on a Karpathy-format fixture: known answers, brute-force reference, 1 vs 2 ranks.

Run as a script (``torchrun ... tests/eval/test_image_text.py JSON ROOT OUT``) it writes OUT/metrics.json on rank 0.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from eval.engine import ScoringSettings
from eval.image_text import evaluate_image_text, load_karpathy
from retriever.process_group import RankInfo, joined_process_group
from tests.helpers.paths import REPO_ROOT
from tests.helpers.toy_retrieval import KnownAnswerEncoder, page_image

N_IMAGES = 7


def make_karpathy(root: Path) -> Path:
    """Images 0..5 have two captions naming their own number; image 6's two captions name image 2 (misleading).

    A train-split image is present to check split filtering.
    """
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(N_IMAGES):
        page_image(i).save(root / f"{i}.png")
        number = 2 if i == 6 else i
        entries.append({"filename": f"{i}.png", "split": "test", "imgid": i,
                        "sentences": [{"raw": f"a photo of {number}"}, {"raw": f"picture number {number}"}]})
    entries.append({"filename": "train.png", "split": "train", "sentences": [{"raw": "ignored 3"}]})
    path = root / "dataset_toy.json"
    path.write_text(json.dumps({"dataset": "toy", "images": entries}))
    return path


def _pair_score(q: torch.Tensor, p: torch.Tensor) -> float:
    """One (caption, image) score in float64, computed alone: identical inputs give bitwise identical scores."""
    q, p = q.double(), p.double()
    return float((q @ p.T).amax(dim=1).sum()) if q.ndim == 2 else float(q @ p)


def _reference(encoder: KnownAnswerEncoder, split, ks) -> dict[str, float]:
    """Brute force, pair by pair, with the evaluator's documented tie rules: captions by index, lower first; images
    in trec_eval's order of their ids. Captions with identical text get identical embeddings from the toy encoder
    and so identical scores here, by construction rather than by float rounding."""
    from eval.engine import trec_tie_key

    q = encoder.encode_queries(split.captions)
    p = encoder.encode_pages(split.load_images(range(len(split.image_paths))))
    scores = torch.tensor([[_pair_score(qc, pi) for pi in p] for qc in q], dtype=torch.float64)
    owner = torch.tensor(split.caption_image)
    image_tie = trec_tie_key([str(i) for i in range(scores.shape[1])])
    out = {}
    for k in ks:
        t2i = [owner[c] in sorted(range(scores.shape[1]), key=lambda j: (-scores[c, j].item(), image_tie[j]))[:k]
               for c in range(scores.shape[0])]
        i2t = [any(owner[c] == i for c in sorted(range(scores.shape[0]), key=lambda c: (-scores[c, i].item(), c))[:k])
               for i in range(scores.shape[1])]
        out[f"t2i_recall_at_{k}"] = sum(map(bool, t2i)) / len(t2i)
        out[f"i2t_recall_at_{k}"] = sum(i2t) / len(i2t)
    return out


@pytest.fixture(scope="module")
def karpathy(tmp_path_factory) -> Path:
    return make_karpathy(tmp_path_factory.mktemp("karpathy"))


@pytest.mark.parametrize("multi", [False, True])
def test_recall_known_answers_and_reference(karpathy: Path, multi: bool) -> None:
    split = load_karpathy(karpathy, karpathy.parent)
    assert len(split.image_paths) == N_IMAGES and len(split.captions) == 2 * N_IMAGES
    encoder = KnownAnswerEncoder(multi)
    metrics = evaluate_image_text(encoder, N_IMAGES, split.load_images, split.captions, split.caption_image,
                                  RankInfo(), k_values=(1, 5, 10), settings=ScoringSettings(chunk_pages=3))
    # image 6's captions retrieve image 2 first: 12 of 14 captions hit at 1; with 7 images every caption hits at 10
    assert metrics["t2i_recall_at_1"] == pytest.approx(12 / 14)
    assert metrics["t2i_recall_at_10"] == 1.0
    # images 0-5 rank a caption naming them first. Image 6's captions repeat image 2's texts word for word, so for
    # every image they tie exactly with image 2's (identical texts share one score row) and rank after them
    # (lower caption index first): image 6 can never find its own caption at 1.
    assert metrics["i2t_recall_at_1"] == 6 / 7
    assert metrics == pytest.approx({**_reference(encoder, split, (1, 5, 10)), "rsum": metrics["rsum"]})
    assert metrics["rsum"] == pytest.approx(100 * sum(v for n, v in metrics.items() if n != "rsum"))


def test_image_to_text_ties_break_by_caption_index() -> None:
    """Exact ties (small integers, exact in float32) rank by caption index; twin captions share a score row."""
    from eval.image_text import _ImageToText, unique_texts

    texts, rows = unique_texts(["a", "b", "a", "c", "b"])
    assert texts == ["a", "b", "c"] and rows == [0, 1, 0, 2, 1]
    scores = torch.tensor([[3.0, 1.0], [3.0, 2.0], [1.0, 2.0]])  # [distinct texts, images]
    collect = _ImageToText(k=5, caption_row=rows)
    collect(scores, range(10, 12))
    # image 10: captions 0, 1, 2, 4 score 3 (texts a, b, a, b) and caption 3 scores 1
    assert collect.rows[10] == [0, 1, 2, 4, 3]
    # image 11: captions 1, 3, 4 score 2, captions 0 and 2 score 1
    assert collect.rows[11] == [1, 3, 4, 0, 2]


def test_bad_karpathy_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"filename": "a.png", "split": "test"}]}))
    with pytest.raises(ValueError, match=r"bad.json: images\[0\] lacks 'sentences'"):
        load_karpathy(bad, tmp_path)
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="Karpathy split format"):
        load_karpathy(bad, tmp_path)
    bad.write_text(json.dumps({"images": [{"filename": "missing.png", "split": "test", "sentences": [{"raw": "x 1"}]}]}))
    split = load_karpathy(bad, tmp_path)
    with pytest.raises(OSError, match="missing.png"):
        split.load_images([0])


@pytest.mark.distributed
def test_one_and_two_ranks_identical(karpathy: Path, tmp_path: Path) -> None:
    split = load_karpathy(karpathy, karpathy.parent)
    single = evaluate_image_text(KnownAnswerEncoder(True), N_IMAGES, split.load_images, split.captions, split.caption_image,
                                 RankInfo(), k_values=(1, 2, 5), settings=ScoringSettings(chunk_pages=2))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
           str(karpathy), str(tmp_path)]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}, timeout=120, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "metrics.json").read_text()) == single


def test_cli_with_tiny_model(karpathy: Path, tiny_model_dir, tmp_path: Path) -> None:
    from eval.image_text import main

    out = tmp_path / "m.json"
    assert main(["--model", str(tiny_model_dir("qwen2_vl")), "--karpathy_json", str(karpathy), "--image_root",
                 str(karpathy.parent), "--head", "multi", "--out", str(out), "--batch_size", "4"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["images"] == N_IMAGES and metrics["captions"] == 2 * N_IMAGES
    assert 0.0 <= metrics["t2i_recall_at_1"] <= metrics["t2i_recall_at_5"] <= metrics["t2i_recall_at_10"] == 1.0


def test_flickr30k_cn_caption_file_equals_the_same_split_as_karpathy_json(karpathy: Path, tiny_model_dir,
                                                                       tmp_path: Path) -> None:
    """The clip_benchmark / InternVL caption text layout (Flickr30K-CN's flickr30k_cn_test.txt): the same images and
    captions as a Karpathy JSON give the same split, and Chinese captions evaluate end to end with the tiny model."""
    from eval.image_text import load_caption_txt, main

    images = {0: ["一只狗在草地上奔跑", "草地上的狗, 很开心"], 1: ["两个人在海边散步"], 2: ["红色的公共汽车停在路边"]}
    root = tmp_path / "cn"
    root.mkdir()
    for i in images:
        page_image(i).save(root / f"{i}.jpg")
    lines = ["image,caption"] + [f"{i}.jpg,{c}" for i, caps in images.items() for c in caps]
    txt = root / "flickr30k_cn_test.txt"
    txt.write_text("\n".join(lines) + "\n", encoding="utf-8")
    split = load_caption_txt(txt, root)
    assert split.captions == [c for caps in images.values() for c in caps]  # commas inside a caption are kept
    assert split.caption_image == [0, 0, 1, 2] and [p.name for p in split.image_paths] == ["0.jpg", "1.jpg", "2.jpg"]
    out = tmp_path / "m.json"
    assert main(["--model", str(tiny_model_dir("qwen2_vl")), "--karpathy_json", str(txt), "--image_root", str(root),
                 "--out", str(out), "--k", "1,3"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["images"] == 3 and metrics["captions"] == 4 and metrics["t2i_recall_at_3"] == 1.0


def test_a_bad_caption_line_names_the_file_and_line(tmp_path: Path) -> None:
    from data_prep.errors import InputError
    from eval.image_text import load_caption_txt

    txt = tmp_path / "c.txt"
    txt.write_text("image,caption\n0.jpg,fine\nno image here\n", encoding="utf-8")
    with pytest.raises(InputError, match=f"{txt}: line 3: expected '<image>.jpg,<caption>'"):
        load_caption_txt(txt, tmp_path)


if __name__ == "__main__":
    with joined_process_group(timedelta(seconds=20)) as info:
        data = load_karpathy(sys.argv[1], Path(sys.argv[1]).parent)
        result = evaluate_image_text(KnownAnswerEncoder(True), N_IMAGES, data.load_images, data.captions,
                                     data.caption_image, info, k_values=(1, 2, 5),
                                     settings=ScoringSettings(chunk_pages=2))
        if info.is_main:
            (Path(sys.argv[2]) / "metrics.json").write_text(json.dumps(result))
