"""The pages a generation run works on: listing, fixed batches, shards, and each page's image.

Batches are cut from the full (unsharded) page list, ``--batch_size`` pages each, and a shard is a contiguous
range of batches. A page is therefore always generated in the same batch, whether the run is sharded, resumed
or neither: batched decoding sees the same inputs (padding included), and the shards' outputs concatenated in
shard order are the unsharded output.
"""
from __future__ import annotations

import base64
import hashlib
import io
import os
from dataclasses import dataclass

from PIL import Image

from data_prep.images import ImageDecodeError, check_still
from data_prep.page_list import read_pages
from data_prep.store import PageStore


@dataclass(frozen=True)
class Page:
    """One page to generate queries for (``page`` and ``source`` are known when listed in a pages.jsonl)."""

    id: str
    doc_id: str
    page: int | None = None
    source: str | None = None


def list_pages(store: PageStore, pages_path: str | os.PathLike | None) -> list[Page]:
    """The pages of ``pages_path`` in file order, or every page of the store in store order."""
    if pages_path is not None:
        return [Page(r["id"], r["doc_id"], r["page"], r["source"]) for r in read_pages(pages_path)]
    return [Page(pid, pid.rsplit("/", 1)[0] if "/" in pid else pid) for pid in store.ids()]


def make_batches(pages: list[Page], batch_size: int) -> list[list[Page]]:
    return [pages[i:i + batch_size] for i in range(0, len(pages), batch_size)]


def shard_batches(batches: list[list[Page]], num_shards: int, shard_index: int) -> list[list[Page]]:
    """Shard ``shard_index`` of ``num_shards`` (``0 <= shard_index < num_shards``): a contiguous, near-equal range
    of the batches."""
    n = len(batches)
    return batches[n * shard_index // num_shards:n * (shard_index + 1) // num_shards]


def page_seed(seed: int, page_id: str) -> int:
    """A per-page seed derived from the run's seed: the same wherever and whenever the page is generated."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{page_id}".encode()).digest()[:4], "big")


def load_image(store: PageStore, page_id: str, max_pixels: int | None) -> tuple[Image.Image, str]:
    """The page as an RGB image and as a data URL, downscaled to at most ``max_pixels`` (aspect kept).

    Raises ``UnknownPageError`` for a page the store does not hold and ``ImageDecodeError`` for bytes that are no
    image, both naming the page (a truncated shard raises ``CorruptStoreError``).
    """
    return image_and_url(store.get_bytes(page_id), f"page {page_id}", max_pixels)


def image_and_url(data: bytes, name: str, max_pixels: int | None) -> tuple[Image.Image, str]:
    """Encoded image bytes as an RGB image and a data URL (downscaled as :func:`load_image` says); ``name`` (e.g.
    ``page doc/3``) is what a decoding error names."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        mime = Image.MIME.get(image.format or "", "image/png")
    except Exception as err:  # PIL raises many types for corrupt data
        raise ImageDecodeError(f"{name}: cannot decode its image: {err}", str(err)) from None
    check_still(image, name)
    image = image.convert("RGB")
    if max_pixels and image.width * image.height > max_pixels:
        scale = (max_pixels / (image.width * image.height)) ** 0.5
        image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))),
                             Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data, mime = buffer.getvalue(), "image/png"
    return image, f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
