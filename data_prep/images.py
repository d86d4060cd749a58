"""Decoding page images: the one decoder every reader of pages goes through (stores, image folders, datasets, the
encoder's inputs), so a page that is not an image always fails the same way, naming the page."""
from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageSequence

from data_prep.errors import InputError

__all__ = ["ImageDecodeError", "decode_image"]


class ImageDecodeError(InputError):
    """Page bytes (or an object) that are not a decodable image; the message names the page."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)  # one positional argument: DataLoader workers re-raise it as type(err)(message)
        self.reason = reason or message


def decode_image(image: Image.Image | bytes | bytearray | memoryview, what: str) -> Image.Image:
    """An RGB PIL image from encoded bytes or a PIL image; failures raise ``ImageDecodeError("page <what>: ...")``
    (a ``ValueError``)."""
    try:
        if isinstance(image, (bytes, bytearray, memoryview)):
            image = Image.open(io.BytesIO(bytes(image)))
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL image or encoded bytes, got {type(image).__name__}")
        image.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for corrupt data
        raise ImageDecodeError(f"page {what}: cannot decode image: {err}", str(err)) from err
    check_still(image, f"page {what}")
    return image if image.mode == "RGB" else image.convert("RGB")


@dataclass(frozen=True)
class Clip:
    """A video clip as a document: its sampled frames (RGB), in order (``data_prep.videos`` stores them)."""

    frames: tuple[Image.Image, ...]


def decode_item(data: Image.Image | Clip | bytes | bytearray | memoryview, what: str) -> Image.Image | Clip:
    """A page image, or a :class:`Clip` for a multi-frame image (a stored video clip); errors as :func:`decode_image`
    says."""
    if isinstance(data, (Image.Image, Clip)):
        return data if isinstance(data, Clip) else decode_image(data, what)
    try:
        return decode_image(data, what)
    except ClipNotPageError:
        return Clip(tuple(decode_frames(bytes(data), f"page {what}")))


def decode_frames(data: bytes, what: str) -> list[Image.Image]:
    """Every frame of an encoded (multi-frame) image as RGB; ``ImageDecodeError`` naming ``what`` when one does not
    decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return [frame.convert("RGB") for frame in ImageSequence.Iterator(image)]
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for corrupt data
        raise ImageDecodeError(f"{what}: cannot decode its frames: {err}", str(err)) from err


class ClipNotPageError(ImageDecodeError):
    """A multi-frame image (a video clip written by ``data_prep.videos``) where a page image was expected: it decodes
    fine (a store holding it is not corrupt), but taking its first frame would silently drop the others."""


def check_still(image: Image.Image, what: str) -> None:
    """Refuse a multi-frame image (a video clip from ``data_prep.videos``) as a page: models do not take clips
    yet."""
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise ClipNotPageError(f"{what}: is a video clip ({frames} frames), not a page image; training, evaluation "
                               "and query generation do not take clips yet (data_prep.videos stores them for that)",
                               "multi-frame image")
