"""Retrieval datasets in BEIR layout (as ViDoRe publishes them) and the registry of MTEB task names.

Layout: three tables, ``corpus`` (``corpus-id``, ``image``), ``queries`` (``query-id``, ``query``) and ``qrels``
(``query-id``, ``corpus-id``, ``score``); ``id`` / ``text`` column names (MTEB's own format) are accepted too.
A source is one of

* a local folder holding ``corpus``, ``queries``, ``qrels`` each as a ``save_to_disk`` dataset, a folder of
  parquet files (a hub snapshot), or a ``<name>.parquet`` file;
* a hub dataset name with configs ``corpus`` / ``queries`` / ``qrels`` (needs a reachable hub);
* an MTEB task name (``VidoreDocVQARetrieval``) or group (``vidore_v1``, ``vidore_v2``, ``vidore_v3``), resolved
  through the installed mteb (its benchmarks ``ViDoRe(v1)``/``ViDoRe(v2)``/``ViDoRe(v3)``) and loaded per
  language subset by mteb's own task class (:mod:`eval.mteb_tasks`), so names, subsets and language filtering never
  drift from MTEB's; ``NAME=PATH`` reads the task's dataset from a local copy of its hub repository.

A page store (:class:`data_prep.store.PageStore`) can replace the corpus table: its page ids are the corpus ids.
Images are decoded lazily, one batch at a time.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from PIL import Image

from data_prep.errors import InputError, MissingInputError
from data_prep.images import Clip
from eval.trec import Qrels

__all__ = ["RetrievalData", "TaskSource", "load_retrieval_data", "resolve_tasks", "GROUPS"]

logger = logging.getLogger(__name__)

GROUPS = {"vidore_v1": "ViDoRe(v1)", "vidore_v2": "ViDoRe(v2)", "vidore_v3": "ViDoRe(v3)"}
_CORPUS_ID, _QUERY_ID, _QUERY_TEXT = ("corpus-id", "id", "_id"), ("query-id", "id", "_id"), ("query", "text")


@dataclass
class RetrievalData:
    """One retrieval task: ordered corpus ids with a lazy image getter, queries and qrels."""

    name: str
    corpus_ids: list[str]
    load_images: Callable[[Sequence[int]], list[Image.Image]]  # corpus positions -> PIL images
    queries: dict[str, str]
    qrels: Qrels

    def check(self) -> None:
        """Warn (with counts) about qrels naming queries or corpus ids that are absent."""
        corpus = set(self.corpus_ids)
        missing_q = [q for q in self.qrels if q not in self.queries]
        missing_d = {d for docs in self.qrels.values() for d in docs if d not in corpus}
        rows = sum(1 for docs in self.qrels.values() for d in docs if d not in corpus)
        if missing_q:
            warnings.warn(f"{self.name}: {len(missing_q)} qrels query ids are not among the {len(self.queries)} "
                          f"queries (e.g. {missing_q[:3]}); they are not scored", stacklevel=2)
        if missing_d:
            warnings.warn(f"{self.name}: {rows} qrels rows name {len(missing_d)} corpus ids absent from the corpus "
                          f"of {len(corpus)} pages (e.g. {sorted(missing_d)[:3]})", stacklevel=2)
        if len(set(self.corpus_ids)) != len(self.corpus_ids):
            raise InputError(f"{self.name}: corpus ids are not unique")


def _column(table: Dataset, candidates: Sequence[str], what: str, source: str) -> str:
    """The first of ``candidates`` present in ``table``, or a clear error."""
    for name in candidates:
        if name in table.column_names:
            return name
    raise InputError(f"{source}: {what} table has columns {table.column_names}, expected one of {list(candidates)}")


def _local_table(root: Path, part: str, split: str) -> Dataset:
    """``root/part`` as a saved dataset, a parquet folder, or ``root/part.parquet``."""
    path = root / part
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        table = load_from_disk(str(path))
    elif path.is_dir() and any(path.rglob("*.parquet")):
        table = load_dataset("parquet", data_files=sorted(str(p) for p in path.rglob("*.parquet")), split="train")
    elif path.with_suffix(".parquet").exists():
        table = load_dataset("parquet", data_files=str(path.with_suffix(".parquet")), split="train")
    else:
        raise MissingInputError(f"{root}: no '{part}' table (saved dataset, parquet folder or {part}.parquet)")
    if isinstance(table, DatasetDict):
        if split not in table:
            raise InputError(f"{path}: split {split!r} not found (have {list(table)})")
        table = table[split]
    return table


def _table(source: str, part: str, split: str) -> Dataset:
    """One of the ``corpus`` / ``queries`` / ``qrels`` tables from a local folder or a hub dataset name."""
    root = Path(source)
    if root.exists():
        return _local_table(root, part, split)
    try:
        return load_dataset(source, part, split=split)
    except Exception as err:  # offline, unknown repository, no such config: all say "cannot get it from the hub"
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise MissingInputError(f"{source}: neither a local folder nor a hub dataset that can be loaded "
                                f"({type(err).__name__}: {first_line})") from err


def load_retrieval_data(source: str, split: str = "test", name: str | None = None,
                        page_store: str | Path | None = None) -> RetrievalData:
    """Load one BEIR-layout task; ``page_store`` replaces the corpus table (its ids are the corpus ids).

    ``source`` may also be a pairs JSONL (``{"query", "pos": [ids]}`` lines, as ``data_prep.build_splits`` writes
    a held-out split): its queries and positives are the task, and ``page_store`` is required as the corpus.
    """
    if str(source).endswith(".jsonl"):
        return _pairs_task(Path(source), name, page_store)
    queries, qrels_table = _table(source, "queries", split), _table(source, "qrels", split)
    q_id = _column(queries, _QUERY_ID, "queries", source)
    q_text = _column(queries, _QUERY_TEXT, "queries", source)
    queries_map = {str(i): str(t) for i, t in zip(queries[q_id], queries[q_text])}
    qrels: Qrels = {}
    for row in qrels_table.select_columns(["query-id", "corpus-id", "score"]).iter(batch_size=10_000):
        for q, d, s in zip(row["query-id"], row["corpus-id"], row["score"]):
            qrels.setdefault(str(q), {})[str(d)] = int(s)
    if page_store is not None:
        from data_prep.store import PageStore

        store = PageStore(page_store)
        ids = store.ids()
        loader = _store_loader(store, ids)
    else:
        corpus = _table(source, "corpus", split)
        ids = [str(i) for i in corpus[_column(corpus, _CORPUS_ID, "corpus", source)]]
        _column(corpus, ("image",), "corpus", source)
        images = corpus.select_columns(["image"])
        loader = _table_loader(images)
    data = RetrievalData(name or Path(source).name, ids, loader, queries_map, qrels)
    data.check()
    return data


def _pairs_task(path: Path, name: str | None, page_store: str | Path | None) -> RetrievalData:
    """A task from a pairs JSONL: query ``q<i>`` is the i-th pair, its ``pos`` pages are relevant (score 1)."""
    from data_prep.store import PageStore
    from retriever.pairs import read_jsonl_pairs

    if page_store is None:
        raise InputError(f"{path}: a pairs JSONL task needs --page_store (the corpus its page ids refer to)")
    pairs = read_jsonl_pairs(path)
    store = PageStore(page_store)
    ids = store.ids()
    queries = {f"q{i}": pair.query for i, pair in enumerate(pairs)}
    qrels: Qrels = {f"q{i}": {page: 1 for page in pair.pos} for i, pair in enumerate(pairs)}
    data = RetrievalData(name or path.stem, ids, _store_loader(store, ids), queries, qrels)
    data.check()
    return data


def _table_loader(images: Dataset) -> Callable[[Sequence[int]], list[Image.Image]]:
    def load(positions: Sequence[int]) -> list[Image.Image]:
        return [img.convert("RGB") for img in images.select(list(positions))["image"]]
    return load


def _store_loader(store, ids: list[str]) -> Callable[[Sequence[int]], list[Image.Image | Clip]]:
    """Pages of a store by position (a stored video clip comes as its :class:`Clip`: text->video retrieval)."""
    def load(positions: Sequence[int]) -> list[Image.Image | Clip]:
        return [store.get_item(ids[p]) for p in positions]
    return load


@dataclass(frozen=True)
class TaskSource:
    """One ``--tasks`` entry: ``mteb`` tasks are loaded per language subset by the installed mteb's own task class
    (:mod:`eval.mteb_tasks`), reading ``source`` (a local copy of its dataset) instead of the hub when set."""

    name: str
    source: str | None
    mteb: bool = False


def resolve_tasks(names: Sequence[str]) -> list[TaskSource]:
    """Local folders, hub names, MTEB task names (``NAME=PATH``: its data from a local copy) and ``vidore_v*``."""
    resolved: list[TaskSource] = []
    for name in names:
        task, _, local = name.partition("=")
        if local and not Path(local).exists():
            raise MissingInputError(f"--tasks {name}: {local} does not exist (a local copy of {task}'s dataset)")
        if Path(name).exists():
            resolved.append(TaskSource(Path(name).stem if name.endswith(".jsonl") else Path(name).name, name))
        elif task in GROUPS or task.startswith("Vidore"):
            import mteb

            tasks = mteb.get_benchmark(GROUPS[task]).tasks if task in GROUPS else [mteb.get_task(task)]
            resolved.extend(TaskSource(t.metadata.name, local or None, mteb=True) for t in tasks)
        else:
            resolved.append(TaskSource(name.split("/")[-1], name))
    return resolved
