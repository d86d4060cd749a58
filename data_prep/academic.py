"""Academic VQA sets -> page store + query/page pairs: ``python -m data_prep.academic --set docvqa --input PATH``.

Supported sets and the published formats they are read from (columns are documented in docs/DATA.md):

=============== ================================================================ ==================================
set             original release (JSON / JSONL + image files)                     Hugging Face (load_from_disk dir
                                                                                  or parquet files)
=============== ================================================================ ==================================
arxivqa         ``arxivqa.jsonl``: id, image (relative path), question, options,  question|query, image, options,
                label, rationale                                                  label|answer
chartqa         ``<split>/<split>_{human,augmented}.json``: imgname, query, label; image, query, label (list)
                images in ``<split>/png/``
docvqa          ``<split>_v1.0.json``: {"data": [questionId, question, image,     questionId, question, image,
                docId, answers, ...]}                                             docId, answers
infographicvqa  ``infographicsVQA_<split>_v1.0.json``: {"data": [questionId,      questionId, question, image,
                question, image_local_name, answers, ...]}; images in a folder    answers
plotqa          ``qa_pairs_V1.json``: {"qa_pairs": [image_index, question_string,  --
                answer, ...]}; images ``png/<image_index>.png``
slidevqa        ``annotations/qa/<split>.jsonl``: deck_name, qa_id, question,     deck_name, qa_id, question,
                answer, evidence_pages (1-based), image_urls; images              answer, evidence_pages,
                ``images/<split>/<deck_name>/<basename of image_urls[i]>``         image_1 .. image_20
=============== ================================================================ ==================================

Output: every referenced image goes into a page store once (original encoded bytes, not re-encoded), with page id
``<set>/<key>`` -- key = the image's file stem (``docvqa/ffbf0023_4``), ``<deck>/<page>`` for SlideVQA, or the
first 16 hex digits of the image's sha256 when the release has no file name (HF ChartQA). Pairs JSONL lines are
``{"query", "answer", "pos": [page ids], "neg": [], "source": set, "doc_id", "qid"}``; ``doc_id`` groups pages of
one document (DocVQA docId, SlideVQA deck) so that splits can keep documents apart.

Resumable: images already in the store are skipped; the pairs file is written to a temporary name and renamed
when complete. Bad input (missing image, missing column, broken JSON) stops with an error naming the file and
the record; pages committed so far stay in the store.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import Image
from tqdm import tqdm

from data_prep.errors import InputError, MissingInputError, cli, read_text_input
from data_prep.jsonl import iter_jsonl
from data_prep.flags import positive_int
from data_prep.outputs import atomic_output, check_outputs
from data_prep.store import PageStoreWriter

SETS = ("arxivqa", "chartqa", "docvqa", "infographicvqa", "plotqa", "slidevqa")


@dataclass
class Example:
    """One question with the images it needs; ``images`` maps page key -> loader of the encoded bytes."""

    qid: str
    query: str
    answer: str
    pos: list[str]
    doc: str
    images: dict[str, Callable[[], bytes]] = field(default_factory=dict)


class FormatError(InputError):
    """Input that does not match the documented layout; the message names the file and record."""


# ---------------------------------------------------------------------------------------------------------------
# reading helpers


def _load_json(path: Path) -> Any:
    try:
        return json.loads(read_text_input(path, "annotation file"))
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: line {e.lineno}: invalid JSON: {e.msg}") from None


def _iter_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    """``("<file>: line N", record)`` for each line; malformed lines raise ``FormatError``."""
    try:
        for lineno, rec in iter_jsonl(path):
            yield f"{path}: line {lineno}", rec
    except ValueError as e:
        raise FormatError(str(e)) from None


def _get(rec: dict, where: str, *names: str) -> Any:
    """The first present column of ``names``; clear error naming the record otherwise."""
    for name in names:
        if name in rec and rec[name] is not None:
            return rec[name]
    raise FormatError(f"{where}: missing column {' or '.join(repr(n) for n in names)} (has {sorted(rec)})")


def _file_loader(path: Path, where: str) -> Callable[[], bytes]:
    def load() -> bytes:
        if not path.is_file():
            raise FormatError(f"{where}: image file not found: {path}")
        return path.read_bytes()

    return load


def _hf_image_bytes(value: Any, where: str, base: Path) -> bytes:
    """Raw bytes of an undecoded ``datasets.Image`` value ({"bytes": ..., "path": ...})."""
    if isinstance(value, dict) and value.get("bytes"):
        return value["bytes"]
    if isinstance(value, dict) and value.get("path"):
        p = Path(value["path"])
        return (p if p.is_absolute() else base / p).read_bytes()
    raise FormatError(f"{where}: image column holds no bytes or path")


def _is_hf(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
                              or (path / "state.json").exists())


def _parquet_files(path: Path) -> list[str]:
    if path.is_file() and path.suffix == ".parquet":
        return [str(path)]
    return sorted(glob.glob(str(path / "**" / "*.parquet"), recursive=True)) if path.is_dir() else []


def iter_hf_rows(path: Path, split: str | None, image_columns: list[str]) -> Iterator[tuple[str, dict]]:
    """Rows of a ``save_to_disk`` folder or parquet files, with image columns left undecoded (original bytes)."""
    import datasets

    if _is_hf(path):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise FormatError(f"{path}: split {split!r} not found (has {sorted(ds)}); pass --split")
            ds = ds[split]
    else:
        files = _parquet_files(path)
        if split and len(files) > 1:
            files = [f for f in files if Path(f).name.startswith(split) or f"/{split}/" in f]
        if not files:
            raise FormatError(f"{path}: no parquet files{f' for split {split!r}' if split else ''} and not a "
                              "save_to_disk folder")
        ds = datasets.load_dataset("parquet", data_files=files, split="train")
    for col in image_columns:
        if col in ds.column_names:
            ds = ds.cast_column(col, datasets.Image(decode=False))
    for i, row in enumerate(ds):
        yield f"{path}: row {i}", row


def _hf_example(where: str, row: dict, base: Path, qid: str, query: str, answer: str,
                image_col: str, doc: str | None = None) -> Example:
    data = _hf_image_bytes(_get(row, where, image_col), where, base)
    key = hashlib.sha256(data).hexdigest()[:16]
    return Example(qid, query, answer, [key], doc or key, {key: lambda: data})


def _answer(value: Any) -> str:
    """First answer of a list (DocVQA/ChartQA list several accepted answers), as a string."""
    if isinstance(value, (list, tuple)):
        return str(value[0]) if value else ""
    return str(value)


# ---------------------------------------------------------------------------------------------------------------
# one reader per set: yields Examples from the original release or from HF rows


def read_arxivqa(path: Path, split: str | None) -> Iterator[Example]:
    if path.suffix == ".jsonl" or (path / "arxivqa.jsonl").exists():
        jsonl = path if path.suffix == ".jsonl" else path / "arxivqa.jsonl"
        for where, rec in _iter_jsonl(jsonl):
            image = Path(_get(rec, where, "image"))
            options = rec.get("options") or []
            label = str(_get(rec, where, "label")).strip()
            answer = next((o for o in options if o.strip().startswith(label)), label)
            key = image.stem
            yield Example(str(_get(rec, where, "id")), _get(rec, where, "question"), answer, [key], key,
                          {key: _file_loader(jsonl.parent / image, where)})
        return
    for where, row in iter_hf_rows(path, split, ["image"]):
        yield _hf_example(where, row, path, str(row.get("id", where)),
                          _get(row, where, "question", "query"), _answer(_get(row, where, "label", "answer")),
                          "image")


def read_chartqa(path: Path, split: str | None) -> Iterator[Example]:
    split = split or "train"
    root = path / split if (path / split).is_dir() else path
    originals = sorted(root.glob(f"{split}_*.json")) if root.is_dir() else []
    if originals:
        for js in originals:
            records = _load_json(js)
            if not isinstance(records, list):
                raise FormatError(f"{js}: expected a JSON list of {{imgname, query, label}}")
            for i, rec in enumerate(records):
                where = f"{js}: record {i}"
                img = _get(rec, where, "imgname")
                key = Path(img).stem
                yield Example(f"{js.stem}/{i}", _get(rec, where, "query"), _answer(_get(rec, where, "label")),
                              [key], key, {key: _file_loader(root / "png" / img, where)})
        return
    for where, row in iter_hf_rows(path, split, ["image"]):
        yield _hf_example(where, row, path, where.rsplit(" ", 1)[-1], _get(row, where, "query"),
                          _answer(_get(row, where, "label")), "image")


def _read_rrc(path: Path, split: str | None, set_name: str, image_field: str, image_dirs: tuple[str, ...],
              doc_field: str | None) -> Iterator[Example]:
    """DocVQA / InfographicVQA: the RRC JSON ({"data": [...]}) or the lmms-lab HF layout."""
    js = path if path.suffix == ".json" else None
    if js is None and path.is_dir():
        cands = sorted(p for p in path.glob("*.json") if not split or split in p.name)
        js = cands[0] if cands else None
    if js is not None:
        data = _load_json(js)
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise FormatError(f"{js}: expected {{\"data\": [...]}} as in the {set_name} release")
        for i, rec in enumerate(data["data"]):
            where = f"{js}: data[{i}] (questionId {rec.get('questionId')})"
            rel = Path(_get(rec, where, image_field))
            image = next((js.parent / d / rel for d in ("", *image_dirs) if (js.parent / d / rel).is_file()),
                         js.parent / rel)
            key = rel.stem
            doc = str(rec[doc_field]) if doc_field and rec.get(doc_field) is not None else key
            yield Example(str(_get(rec, where, "questionId")), _get(rec, where, "question"),
                          _answer(_get(rec, where, "answers")), [key], doc, {key: _file_loader(image, where)})
        return
    for where, row in iter_hf_rows(path, split, ["image"]):
        doc = str(row[doc_field]) if doc_field and row.get(doc_field) is not None else None
        yield _hf_example(where, row, path, str(_get(row, where, "questionId")),
                          _get(row, where, "question"), _answer(row.get("answers") or []), "image", doc)


def read_docvqa(path: Path, split: str | None) -> Iterator[Example]:
    return _read_rrc(path, split, "docvqa", "image", ("documents", "images"), "docId")


def read_infographicvqa(path: Path, split: str | None) -> Iterator[Example]:
    return _read_rrc(path, split, "infographicvqa", "image_local_name", ("infographicsvqa_images", "images"), None)


def read_plotqa(path: Path, split: str | None) -> Iterator[Example]:
    root = path / split if split and (path / split).is_dir() else path
    js = root if root.suffix == ".json" else next(iter(sorted(root.glob("qa_pairs*.json"))), None)
    if js is None:
        raise FormatError(f"{path}: no qa_pairs*.json found (PlotQA layout: <split>/qa_pairs_V1.json, <split>/png/)")
    data = _load_json(js)
    pairs = data["qa_pairs"] if isinstance(data, dict) and "qa_pairs" in data else data
    if not isinstance(pairs, list):
        raise FormatError(f"{js}: expected {{\"qa_pairs\": [...]}}")
    for i, rec in enumerate(pairs):
        where = f"{js}: qa_pairs[{i}]"
        index = _get(rec, where, "image_index")
        key = str(index)
        yield Example(str(rec.get("question_id", i)), _get(rec, where, "question_string"),
                      str(_get(rec, where, "answer")), [key], key,
                      {key: _file_loader(js.parent / "png" / f"{index}.png", where)})


def read_slidevqa(path: Path, split: str | None) -> Iterator[Example]:
    split = split or "train"
    qa = path / "annotations" / "qa" / f"{split}.jsonl"
    if path.suffix == ".jsonl":
        qa, path = path, path.parents[2]
    if qa.exists():
        for where, rec in _iter_jsonl(qa):
            deck = _get(rec, where, "deck_name")
            urls = _get(rec, where, "image_urls")
            pages = [int(p) for p in _get(rec, where, "evidence_pages")]
            images = {f"{deck}/{p}": _file_loader(path / "images" / split / deck / os.path.basename(urls[p - 1]),
                                                 where) for p in pages}
            yield Example(str(_get(rec, where, "qa_id")), _get(rec, where, "question"), str(rec.get("answer", "")),
                          list(images), deck, images)
        return
    image_cols = [f"image_{i}" for i in range(1, 21)]
    for where, row in iter_hf_rows(path, split, image_cols):
        deck = _get(row, where, "deck_name")
        pages = [int(p) for p in _get(row, where, "evidence_pages")]
        images = {f"{deck}/{p}": (lambda v=_get(row, where, f"image_{p}"), w=where: _hf_image_bytes(v, w, path))
                  for p in pages}
        yield Example(str(_get(row, where, "qa_id")), _get(row, where, "question"), str(row.get("answer", "")),
                      list(images), deck, images)


READERS: dict[str, Callable[[Path, str | None], Iterator[Example]]] = {
    "arxivqa": read_arxivqa, "chartqa": read_chartqa, "docvqa": read_docvqa,
    "infographicvqa": read_infographicvqa, "plotqa": read_plotqa, "slidevqa": read_slidevqa,
}


# ---------------------------------------------------------------------------------------------------------------
# conversion


def _image_meta(data: bytes, set_name: str, key: str) -> dict[str, Any]:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return {"source": set_name, "key": key, "width": img.width, "height": img.height,
                    "format": (img.format or "").lower()}
    except Exception as e:
        raise FormatError(f"{set_name} image {key!r} is not a readable image: {e}") from None


def convert(set_name: str, input_path: str | os.PathLike, store: str | os.PathLike, pairs: str | os.PathLike,
            split: str | None = None, limit: int | None = None) -> dict[str, int]:
    """Convert one set; returns ``{"pairs", "pages_written", "pages"}``."""
    if set_name not in READERS:
        raise InputError(f"unknown set {set_name!r}; choose from {', '.join(SETS)}")
    path = Path(input_path)
    if not path.exists():
        raise MissingInputError(f"{set_name} input not found: {path}")
    pairs = Path(pairs)
    pairs.parent.mkdir(parents=True, exist_ok=True)
    n_pairs, page_ids = 0, set()
    with atomic_output(pairs) as fh, PageStoreWriter(store) as writer:  # pairs appear once the store is complete
        for ex in tqdm(READERS[set_name](path, split), desc=f"{set_name}", unit="q"):
            if limit is not None and n_pairs >= limit:
                break
            for key, load in ex.images.items():
                pid = f"{set_name}/{key}"
                page_ids.add(pid)
                if not writer.has(pid):
                    data = load()
                    writer.add(pid, data, _image_meta(data, set_name, key))
            record = {"query": ex.query, "answer": ex.answer, "pos": [f"{set_name}/{k}" for k in ex.pos], "neg": [],
                      "source": set_name, "doc_id": f"{set_name}/{ex.doc}", "qid": ex.qid}
            fh.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
            n_pairs += 1
    pages_written = writer.pages_written
    print(f"academic: {set_name}: {n_pairs} pairs -> {pairs}; {len(page_ids)} pages referenced, "
          f"{pages_written} newly written to {store}")
    return {"pairs": n_pairs, "pages": len(page_ids), "pages_written": pages_written}


@cli
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m data_prep.academic", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", required=True, choices=SETS, help="which dataset the input is")
    ap.add_argument("--input", required=True,
                    help="the release as saved locally: its folder / annotation file, a save_to_disk folder, "
                         "or a folder of parquet files")
    ap.add_argument("--split", help="split to read where the input holds several (e.g. train, val, test)")
    ap.add_argument("--store", required=True, help="page store directory to add the images to")
    ap.add_argument("--pairs", required=True, help="output pairs JSONL")
    ap.add_argument("--limit", type=positive_int, help="convert only the first N questions")
    args = ap.parse_args(argv)
    check_outputs({"--store": args.store, "--pairs": args.pairs}, {"--input": args.input}, directories=("--store",))
    convert(args.set, args.input, args.store, args.pairs, args.split, args.limit)


if __name__ == "__main__":
    main()
