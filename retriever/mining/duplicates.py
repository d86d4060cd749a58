"""Near duplicates of a positive page: the same page under another id must never be mined as its negative.

Three tests, any of which makes a candidate the positive's duplicate:

* **same PDF page**: ``pages.jsonl`` records the sha256 of the source PDF and the page number, so page 3 of two
  copies of one PDF (two ids) share the key ``(sha256, 3)``;
* **same rendered bytes**: the encoded image bytes (as stored in a page store or image file) hash the same;
* **close perceptual hash** (optional): the 64-bit average hash of the two images (8x8 grey thumbnail, one bit
  per pixel above the mean) differs in at most ``hash_distance`` bits, which catches re-renders and re-scans.

Byte and perceptual hashes are computed lazily, only for the positives and the candidates a query looks at, and
cached, so mining a large corpus never hashes pages nobody retrieves.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Sequence

from PIL import Image

from data_prep.page_list import read_pages
from retriever.page_sources import ImageFolder, PageResolver, StorePages


def average_hash(image: Image.Image) -> int:
    """64-bit average hash: 8x8 greyscale thumbnail, bit set where the pixel is above the thumbnail's mean."""
    pixels = list(image.convert("L").resize((8, 8), Image.Resampling.BILINEAR).getdata())
    mean = sum(pixels) / len(pixels)
    return sum(1 << i for i, value in enumerate(pixels) if value > mean)


def pdf_page_keys(paths: Sequence[str | Path]) -> dict[str, tuple[str, int]]:
    """Page id -> (source PDF sha256, page number), from ``pages.jsonl`` files (lines without sha256 skipped)."""
    keys: dict[str, tuple[str, int]] = {}
    for path in paths:
        for record in read_pages(path):
            if record.get("sha256"):
                keys[record["id"]] = (record["sha256"], record["page"])
    return keys


class NearDuplicates:
    """Decides whether a page is a near duplicate of any of a query's positives (see the module docstring)."""

    def __init__(self, resolver: PageResolver, pdf_keys: dict[str, tuple[str, int]] | None = None,
                 same_bytes: bool = True, hash_distance: int = -1):
        self.resolver = resolver
        self.pdf_keys = pdf_keys or {}
        self.same_bytes = same_bytes
        self.hash_distance = hash_distance
        self._bytes: dict[str, str] = {}
        self._hashes: dict[str, int] = {}

    def test_for(self, positives: Sequence[str]):
        """A predicate ``page -> bool``: True when ``page`` duplicates one of ``positives``."""
        pdf = {self.pdf_keys[p] for p in positives if p in self.pdf_keys}
        digests = {self.byte_digest(p) for p in positives} if self.same_bytes else set()
        hashes = [self.perceptual_hash(p) for p in positives] if self.hash_distance >= 0 else []

        def is_duplicate(page: str) -> bool:
            if pdf and self.pdf_keys.get(page) in pdf:
                return True
            if digests and self.byte_digest(page) in digests:
                return True
            return any(bin(self.perceptual_hash(page) ^ h).count("1") <= self.hash_distance for h in hashes)

        return is_duplicate

    def byte_digest(self, page: str) -> str:
        if page not in self._bytes:
            self._bytes[page] = hashlib.sha256(self._raw_bytes(page)).hexdigest()
        return self._bytes[page]

    def perceptual_hash(self, page: str) -> int:
        if page not in self._hashes:
            self._hashes[page] = average_hash(self.resolver.get_image(page))
        return self._hashes[page]

    def _raw_bytes(self, page: str) -> bytes:
        """The page's encoded bytes where its source keeps them, else the decoded pixels re-encoded as PNG."""
        source = self.resolver.source_of(page)
        if isinstance(source, StorePages):
            return source.store.get_bytes(page)
        if isinstance(source, ImageFolder):
            return (source.root / page).read_bytes()
        buffer = io.BytesIO()
        self.resolver.get_image(page).save(buffer, format="PNG")
        return buffer.getvalue()
