"""Training pairs: a query, its positive pages, optional hard-negative pages — read and validated up front.

Two inputs are accepted:

* JSONL, one line per query: ``{"query": str, "pos": [page_id, ...], "neg": [page_id, ...]}`` (extra keys such
  as ``answer`` or ``source`` are kept out of the way). Every id must resolve in the page sources.
* A local HF dataset (a ``save_to_disk`` folder, or parquet files) with ``query`` and ``image`` columns: each row
  is a pair whose positive is its own image.

Every line is checked before training starts, so a bad line fails the run in seconds, with the file, the line
number and the offending id, instead of hours into it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from data_prep.errors import InputError, MissingInputError
from data_prep.jsonl import iter_jsonl
from retriever.page_sources import DatasetPages, PageResolver, PageSource


@dataclass(frozen=True)
class Pair:
    """One training query with the ids of its positive and hard-negative pages."""

    query: str
    pos: tuple[str, ...]
    neg: tuple[str, ...] = field(default=())
    line: int = field(default=0, compare=False)  # line of the JSONL file (row of a dataset), for error messages


class PairsError(InputError):
    """A training-data line that cannot be used; the message names the file and the line."""


def read_jsonl_pairs(path: str | Path) -> list[Pair]:
    """Parse a pairs JSONL file; raise ``PairsError`` naming file and line for the first malformed line."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"training data {path} does not exist (--train_data: a pairs JSONL or an HF dataset)")
    try:
        records = list(iter_jsonl(path))
    except ValueError as err:
        raise PairsError(str(err)) from None
    pairs = [_parse_record(record, path, number) for number, record in records]
    if not pairs:
        raise PairsError(f"{path}: no training pairs")
    return pairs


def _parse_record(record: dict, path: Path, number: int) -> Pair:
    where = f"{path}: line {number}"
    query = record.get("query")
    if not isinstance(query, str) or not query.strip():
        raise PairsError(f"{where}: 'query' must be a non-empty string")
    pos, neg = record.get("pos"), record.get("neg", [])
    for key, ids in (("pos", pos), ("neg", neg)):
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise PairsError(f"{where}: '{key}' must be a list of page ids (strings)")
    if not pos:
        raise PairsError(f"{where}: 'pos' is empty; every query needs at least one positive page")
    clean_neg = tuple(dict.fromkeys(i for i in neg if i not in pos))
    return Pair(query=query, pos=tuple(dict.fromkeys(pos)), neg=clean_neg, line=number)


def validate_pairs(pairs: list[Pair], resolver: PageResolver, source: str | Path) -> None:
    """Check that every page id resolves; raise naming the file, line number and id of the first that does not."""
    seen: dict[str, bool] = {}
    for pair in tqdm(pairs, desc="checking page ids", unit="pair", leave=False):
        for page_id in pair.pos + pair.neg:
            if page_id not in seen:
                seen[page_id] = page_id in resolver
            if not seen[page_id]:
                names = ", ".join(s.name for s in resolver.sources)
                raise PairsError(f"{source}: line {pair.line}: unknown page id {page_id!r} (looked in: {names})")


def is_hf_dataset(path: str | Path) -> bool:
    """A ``save_to_disk`` folder or parquet file(s), as opposed to a JSONL file."""
    path = Path(path)
    if path.is_dir():
        return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() or any(
            path.glob("*.parquet")
        )
    return path.suffix == ".parquet"


def load_hf_pairs(path: str | Path, image_column: str = "image", id_column: str | None = None) -> tuple[list[Pair], PageSource]:
    """Pairs from a local HF dataset with ``query`` and image columns; returns the pairs and their page source."""
    import datasets

    path = Path(path)
    if path.is_dir() and not any(path.glob("*.parquet")):
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            if "train" not in dataset:
                raise PairsError(f"{path}: a DatasetDict without a 'train' split (splits: {list(dataset)})")
            dataset = dataset["train"]
    else:
        files = sorted(str(p) for p in path.glob("*.parquet")) if path.is_dir() else [str(path)]
        dataset = datasets.load_dataset("parquet", data_files=files, split="train")
    if "query" not in dataset.column_names:
        raise PairsError(f"{path}: no 'query' column (columns: {dataset.column_names})")
    pages = DatasetPages(dataset, image_column=image_column, id_column=id_column, name=str(path))
    pairs = []
    for row, (query, page_id) in enumerate(zip(dataset["query"], pages.row_ids)):
        if not isinstance(query, str) or not query.strip():
            raise PairsError(f"{path}: row {row} has an empty query")
        pairs.append(Pair(query=query, pos=(page_id,), line=row))
    return pairs, pages
