"""Where training pages come from: page stores, an image folder, or a local HF dataset, all looked up by id.

A training pair names its pages by id. ``PageResolver`` asks each source in turn whether it holds an id, so one run
can mix several HDF5 page stores (ids as written by ``data_prep.render``), a folder of image files (ids are paths
relative to ``--image_root``) and a dataset saved with ``datasets`` (ids ``row<N>`` or a chosen id column).
Sources are opened lazily per process, so a resolver can be handed to forked DataLoader workers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Protocol

from PIL import Image

from data_prep.errors import InputError, MissingInputError
from data_prep.images import Clip, decode_image
from data_prep.store import UnknownPageError


class PageSource(Protocol):
    """Anything that holds page images by id."""

    name: str

    def __contains__(self, page_id: str) -> bool: ...

    def get_image(self, page_id: str) -> Image.Image: ...

    def ids(self) -> list[str]: ...


class ImageFolder:
    """Image files below a root folder; a page id is the file's path relative to the root."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise MissingInputError(f"--image_root {self.root} is not a directory")
        self.name = str(self.root)

    def __contains__(self, page_id: str) -> bool:
        return (self.root / page_id).is_file()

    def get_image(self, page_id: str) -> Image.Image:
        path = self.root / page_id
        return decode_image(path.read_bytes(), f"{page_id} ({path})")

    def ids(self) -> list[str]:
        suffixes = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.suffix.lower() in suffixes)


class StorePages:
    """An HDF5 page store written by ``data_prep.render`` (one file or a folder of shards)."""

    def __init__(self, path: str | Path):
        from data_prep.store import PageStore

        self.store = PageStore(path)
        self.name = str(path)
        self._ids: set[str] | None = None

    def __contains__(self, page_id: str) -> bool:
        if self._ids is None:
            self._ids = set(self.store.ids())
        return page_id in self._ids

    def get_image(self, page_id: str) -> Image.Image | Clip:
        """The page image, or the :class:`~data_prep.images.Clip` of a stored video clip."""
        return self.store.get_item(page_id)

    def ids(self) -> list[str]:
        return list(self.store.ids())


class DatasetPages:
    """The image column of a local HF dataset; ids are ``row<N>`` or the values of ``id_column``."""

    def __init__(self, dataset, image_column: str = "image", id_column: str | None = None, name: str = "dataset"):
        if image_column not in dataset.column_names:
            raise InputError(f"{name}: no column {image_column!r} (columns: {dataset.column_names})")
        self.dataset = dataset
        self.image_column = image_column
        self.name = name
        keys = dataset[id_column] if id_column else [f"row{i}" for i in range(len(dataset))]
        self.row_ids = [str(key) for key in keys]
        self._rows = {key: row for row, key in enumerate(self.row_ids)}

    def __contains__(self, page_id: str) -> bool:
        return page_id in self._rows

    def get_image(self, page_id: str) -> Image.Image:
        value = self.dataset[self._rows[page_id]][self.image_column]
        if isinstance(value, Image.Image):
            return value.convert("RGB")
        if isinstance(value, dict) and value.get("bytes") is not None:
            return decode_image(value["bytes"], f"{page_id} ({self.name})")
        if isinstance(value, dict) and value.get("path"):
            return decode_image(Path(value["path"]).read_bytes(), f"{page_id} ({self.name})")
        raise InputError(f"{self.name}: page {page_id} has no decodable image in column {self.image_column!r}")

    def ids(self) -> list[str]:
        return list(self._rows)


class PageResolver:
    """Looks a page id up in several sources, first match wins."""

    def __init__(self, sources: Iterable[PageSource]):
        self.sources = list(sources)
        if not self.sources:
            raise InputError("no page source given: pass --page_store, --image_root or an HF dataset as --train_data")

    def source_of(self, page_id: str) -> PageSource | None:
        return next((source for source in self.sources if page_id in source), None)

    def __contains__(self, page_id: str) -> bool:
        return self.source_of(page_id) is not None

    def get_image(self, page_id: str) -> Image.Image:
        source = self.source_of(page_id)
        if source is None:
            names = ", ".join(s.name for s in self.sources)
            raise UnknownPageError(f"page id {page_id!r} is in none of the page sources ({names})")
        return source.get_image(page_id)
