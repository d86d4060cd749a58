"""Page rasterization with PyMuPDF and encoding with PIL, plus the task handler of render workers.

PyMuPDF is not thread-safe, so pages are rendered in worker *processes*; each task is a run of consecutive pages
of one document, so a worker opens each document once per task (and keeps the last one open for the next task of
the same document). The longest side is capped by lowering the render scale (never by rendering big and
resizing): a 28,590-px-tall page at 144 dpi costs what a capped page costs. Encoding is deterministic (fixed
quality, no optimizer passes), so a page renders to the same bytes in every run -- what makes resume exact.

Render workers run under ``data_prep.supervisor`` (per-page timeout, replacement of dead workers); a task is a run
of page records of one document and yields one ``("ok", bytes, meta)`` or ``("fail", reason)`` per page.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Iterator

import pymupdf
from PIL import Image

from data_prep.errors import InputError
from data_prep.pdf import PdfError, open_pdf, password_for

FORMATS = ("jpeg", "png", "webp")


@dataclass(frozen=True)
class RenderSettings:
    dpi: float = 144.0
    max_side: int = 4096
    fmt: str = "jpeg"
    quality: int = 90

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise InputError(f"unknown image format {self.fmt!r}; choose from {sorted(FORMATS)}")
        if self.dpi <= 0 or self.max_side < 16 or not 1 <= self.quality <= 100:
            raise InputError(f"need --dpi > 0, --max_side >= 16 and 1 <= --quality <= 100; got {self.dpi}, "
                             f"{self.max_side}, {self.quality}")

    def fingerprint(self) -> dict[str, Any]:
        """The settings that decide a page's bytes, by flag (PNG ignores the quality)."""
        return {"--dpi": self.dpi, "--max_side": self.max_side, "--format": self.fmt,
                "--quality": None if self.fmt == "png" else self.quality}


def encode(img: Image.Image, settings: RenderSettings) -> bytes:
    """Encode deterministically: JPEG/WebP at ``quality``, PNG at zlib level 6 (``quality`` ignored)."""
    buf = io.BytesIO()
    if settings.fmt == "png":
        img.save(buf, "PNG", compress_level=6)
    elif settings.fmt == "webp":
        img.save(buf, "WEBP", quality=settings.quality, method=4)
    else:
        img.save(buf, "JPEG", quality=settings.quality)
    return buf.getvalue()


def render_page(page: pymupdf.Page, settings: RenderSettings) -> tuple[Image.Image, float]:
    """Render one page to RGB at ``dpi``, scaled down so the longest side is at most ``max_side``.

    Returns the image and the effective dpi.
    """
    long_pt = max(page.rect.width, page.rect.height)
    if long_pt <= 0:
        raise PdfError(f"page has an empty media box ({page.rect})")
    zoom = settings.dpi / 72.0
    if long_pt * zoom > settings.max_side:
        zoom = (settings.max_side - 1) / long_pt  # 1 px margin: MuPDF rounds the pixel box outwards
    pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csRGB, alpha=False)
    img = Image.frombytes("RGB", (pix.width, pix.height), pix.samples_mv, "raw", "RGB", pix.stride)  # one copy
    return img, zoom * 72.0


def page_meta(rec: dict[str, Any], img: Image.Image, dpi: float, page: pymupdf.Page,
              settings: RenderSettings) -> dict[str, Any]:
    return {"source": rec["source"], "relpath": rec.get("relpath"), "doc_id": rec["doc_id"], "page": rec["page"],
            "sha256": rec.get("sha256"), "width": img.width, "height": img.height, "dpi": round(dpi, 4),
            "dpi_requested": settings.dpi, "format": settings.fmt, "page_width_pt": round(page.rect.width, 2),
            "page_height_pt": round(page.rect.height, 2)}


class _DocCache:
    """Keeps the last opened document of this worker (consecutive tasks are often of the same PDF)."""

    def __init__(self) -> None:
        self.source: str | None = None
        self.doc: pymupdf.Document | None = None

    def get(self, rec: dict[str, Any], passwords: dict[str, str]) -> pymupdf.Document:
        if self.source != rec["source"]:
            self.close()
            pw = password_for(passwords, rec.get("relpath") or "", rec.get("sha256") or "")
            self.doc = open_pdf(rec["source"], pw)
            self.source = rec["source"]
        assert self.doc is not None
        return self.doc

    def close(self) -> None:
        if self.doc is not None:
            self.doc.close()
        self.source, self.doc = None, None


def render_pages(pages: list[dict[str, Any]], settings: RenderSettings, passwords: dict[str, str],
                 cache: _DocCache) -> Iterator[tuple]:
    """Render a run of pages of one document: yields ``("ok", bytes, meta)`` or ``("fail", reason)`` per page."""
    try:
        doc = cache.get(pages[0], passwords)
    except PdfError as e:
        for _ in pages:
            yield ("fail", str(e))
        return
    for rec in pages:
        try:
            if rec["page"] > doc.page_count:
                raise PdfError(f"page {rec['page']} out of range: document has {doc.page_count} pages")
            page = doc.load_page(rec["page"] - 1)
            img, dpi = render_page(page, settings)
            yield ("ok", encode(img, settings), page_meta(rec, img, dpi, page, settings))
        except Exception as e:  # fonts that fail, broken content streams, decoder errors: recorded, not fatal
            yield ("fail", f"render error: {type(e).__name__}: {e}")


def page_renderer(settings: RenderSettings, passwords: dict[str, str]):
    """Worker-side factory (see ``data_prep.supervisor``): the task handler of a render process."""
    pymupdf.TOOLS.mupdf_display_errors(False)
    pymupdf.TOOLS.mupdf_display_warnings(False)
    cache = _DocCache()
    return lambda pages: render_pages(pages, settings, passwords, cache)
