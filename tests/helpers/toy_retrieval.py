"""A toy retrieval task with known answers: a BEIR folder of noise pages and an encoder that knows which page each
query is about (evaluation, MTEB, image-text and full-disk tests share it)."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from PIL import Image

N_PAGES, DIM = 23, 32


def page_image(i: int) -> Image.Image:
    """Page ``i``: seeded noise (distinct pages for real models), its number in pixel (0, 0) for the toy encoder."""
    noise = torch.randint(0, 256, (56, 56, 3), generator=torch.Generator().manual_seed(i), dtype=torch.uint8)
    image = Image.fromarray(noise.numpy(), "RGB")
    image.putpixel((0, 0), (i % 256, i // 256, 7))
    return image


def _noise(key: str, shape: tuple[int, ...], scale: float) -> torch.Tensor:
    """Seeded noise of about ``scale``, rounded to multiples of 1/256 (drawn in float64, whose bits do not depend
    on the CPU's vector kernels). Dot products of such vectors are exact in float32 whatever the summation order,
    so every scoring path (chunked, sharded, full matrix) gives bit-identical scores, and ties are exact."""
    seed = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    noise = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (torch.round(noise * scale * 256) / 256).float()


class KnownAnswerEncoder:
    """Deterministic encoder with known answers: query "about page i" is closest to page i.

    Dense: one-hot of the page number plus small hashed noise. Multi-vector: the same vector as one token
    among several noise tokens (different counts per item), so MaxSim finds it. All values are multiples of 1/256,
    so scores are exact in float32 on every machine (see ``_noise``). ``identity`` stands for the checkpoint it
    would be loaded from, in the ``fingerprint`` resumable state records.
    """

    def __init__(self, multi_vector: bool, identity: str = "known answers") -> None:
        self.multi_vector = multi_vector
        self.fingerprint = {"model checkpoint": identity, "head": "multi" if multi_vector else "dense"}

    def _vectors(self, number: int, key: str) -> torch.Tensor:
        base = torch.zeros(DIM)
        base[number % DIM] = 1.0
        base += _noise(key, (DIM,), 0.05)
        if not self.multi_vector:
            return base
        extra = _noise(key + "/tokens", (2 + number % 3, DIM), 0.02)
        return torch.cat([extra[:1], base[None], extra[1:]])

    def _stack(self, vecs: list[torch.Tensor]):
        return vecs if self.multi_vector else torch.stack(vecs)

    def encode_queries(self, texts, batch_size=8, progress=False):
        return self._stack([self._vectors(int(re.search(r"\d+", t).group()), t) for t in texts])

    def encode_pages(self, images, batch_size=8, ids=None, progress=False):
        numbers = [img.getpixel((0, 0))[0] + 256 * img.getpixel((0, 0))[1] for img in images]
        return self._stack([self._vectors(n, f"page{n}") for n in numbers])


def make_beir(root: Path, extra_qrels: bool = False, query_prefix: str = "q", page_prefix: str = "p") -> Path:
    """A BEIR folder of N_PAGES pages; q_i is about page i, q_0 also about page 1 (ids ``<prefix><i>``)."""
    from datasets import Dataset, Features, Image as ImageFeature, Value

    q, p = query_prefix, page_prefix
    corpus = Dataset.from_dict({"corpus-id": [f"{p}{i}" for i in range(N_PAGES)],
                                "image": [page_image(i) for i in range(N_PAGES)]},
                               features=Features({"corpus-id": Value("string"), "image": ImageFeature()}))
    corpus.save_to_disk(str(root / "corpus"))
    Dataset.from_dict({"query-id": [f"{q}{i}" for i in range(0, N_PAGES, 2)],
                       "query": [f"about page {i}" for i in range(0, N_PAGES, 2)]}).save_to_disk(str(root / "queries"))
    qrels = {"query-id": [f"{q}{i}" for i in range(0, N_PAGES, 2)] + [f"{q}0"],
             "corpus-id": [f"{p}{i}" for i in range(0, N_PAGES, 2)] + [f"{p}1"],
             "score": [1] * (N_PAGES // 2 + 1) + [1]}
    if extra_qrels:
        extra = {"query-id": [f"{q}2", f"{q}4"], "corpus-id": [f"{p}_gone", f"{p}_gone2"], "score": [1, 1]}
        qrels = {k: v + extra[k] for k, v in qrels.items()}
    Dataset.from_dict(qrels).save_to_disk(str(root / "qrels"))
    return root
