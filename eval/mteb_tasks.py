"""MTEB retrieval tasks scored per language subset, exactly as MTEB (and so the ViDoRe leaderboard) scores them.

The installed mteb's task class decides everything about the data: :func:`load_subsets` calls the task's own
``load_data`` (ViDoRe v2: one ``queries`` table filtered on its ``language`` column per subset of
``metadata.eval_langs``; ViDoRe v3: one ``<subset>-corpus`` / ``-queries`` / ``-qrels`` config per subset; ViDoRe
v1: a single ``default`` subset) and converts each subset to a :class:`eval.datasets.RetrievalData`; nothing here
lists languages or columns. A local copy of the task's dataset (the hub repository's layout: a ``README.md``
whose ``configs`` name the parquet files) can replace the hub path; a dataset that is neither cached nor
downloadable (``HF_HUB_OFFLINE=1``, no reachable hub) is one error line saying how to give that copy.

:func:`task_result` turns per-subset metrics into mteb's own ``TaskResult``, whose ``get_score`` gives the task's
score as MTEB aggregates it (the mean over subsets and splits); :func:`save_task_result` writes it with mteb's
``ResultCache`` (``<dir>/results/<model>/<revision>/<task>.json`` plus ``model_meta.json``).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mteb
from mteb.abstasks.abstask import AbsTask
from mteb.cache import ResultCache
from mteb.models.model_meta import ModelMeta
from mteb.results import TaskResult

from data_prep.errors import InputError, MissingInputError
from eval.datasets import RetrievalData
from eval.trec import Qrels

__all__ = ["get_task", "load_subsets", "save_task_result", "subset_average", "task_result"]


def get_task(name: str, local_path: str | None = None) -> AbsTask:
    """The installed mteb's task ``name``, reading its dataset from ``local_path`` when given."""
    try:
        task = mteb.get_task(name)
    except KeyError as err:
        raise InputError(f"--tasks {name}: not a task of the installed mteb {mteb.__version__} ({err})") from err
    if local_path is not None:
        task.metadata = task.metadata.model_copy(update={"dataset": {**task.metadata.dataset, "path": local_path}})
    return task


def _subset_data(name: str, split_data: Mapping[str, Any]) -> RetrievalData:
    """One mteb subset (``corpus`` with ``id``/``image``, ``queries`` with ``id``/``text``, ``relevant_docs``)."""
    corpus, queries = split_data["corpus"], split_data["queries"]
    query_map = {str(q): str(t) for q, t in zip(queries["id"], queries["text"])}
    # mteb's v2 loader gives every subset the qrels of all languages; only this subset's queries can be scored
    qrels: Qrels = {q: {str(d): int(s) for d, s in docs.items()}
                    for q, docs in split_data["relevant_docs"].items() if q in query_map and docs}
    images = corpus.select_columns(["image"])

    def load(positions) -> list:
        return [img.convert("RGB") for img in images.select(list(positions))["image"]]

    data = RetrievalData(name, [str(i) for i in corpus["id"]], load, query_map, qrels)
    data.check()
    return data


def load_subsets(task: AbsTask, split: str = "test") -> dict[str, RetrievalData]:
    """``{hf_subset: data}`` for ``split`` of ``task``, loaded by the task's own ``load_data``."""
    if split not in task.metadata.eval_splits:
        raise InputError(f"--split {split}: task {task.metadata.name} is evaluated on {task.metadata.eval_splits}")
    try:
        task.load_data()
    except ConnectionError as err:  # datasets' "Couldn't reach ... on the Hub", huggingface_hub's offline errors
        raise _unavailable(task, err) from err
    task.convert_v1_dataset_format_to_v2(num_proc=None)
    return {subset: _subset_data(f"{task.metadata.name}/{subset}", splits[split])
            for subset, splits in task.dataset.items() if subset in task.hf_subsets}


def _unavailable(task: AbsTask, err: ConnectionError) -> MissingInputError:
    """The error for a task whose dataset is not cached and cannot be downloaded."""
    from huggingface_hub import constants

    name, path = task.metadata.name, task.metadata.dataset["path"]
    why = "HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else f"no reachable hub: {type(err).__name__}"
    return MissingInputError(f"{name}: its dataset {path} is not available offline ({why}); download it where the "
                             f"hub is reachable (huggingface-cli download {path} --repo-type dataset --local-dir DIR) "
                             f"and give the local copy as {name}=DIR")


def task_result(task: AbsTask, split: str, subset_metrics: Mapping[str, Mapping[str, float]],
                evaluation_time: float) -> TaskResult:
    """mteb's ``TaskResult`` of ``{hf_subset: aggregate metrics}`` (``main_score`` = the task's main metric)."""
    main = task.metadata.main_score
    missing = [s for s, agg in subset_metrics.items() if main not in agg]
    if missing:
        raise InputError(f"task {task.metadata.name}: its main score {main} was not computed for subsets {missing} "
                         f"(add its cutoff to --k, or the subset has no query with qrels)")
    scores = {split: {subset: {**dict(agg), "main_score": agg[main]} for subset, agg in subset_metrics.items()}}
    return TaskResult.from_task_results(task, scores, evaluation_time=evaluation_time)


def subset_average(result: TaskResult) -> dict[str, float]:
    """Every metric (``main_score`` included) averaged over subsets and splits by mteb's ``TaskResult.get_score``."""
    names = sorted({m for split in result.scores.values() for s in split for m, v in s.items()
                    if isinstance(v, float)})
    return {m: float(result.get_score(getter=lambda s, m=m: s[m])) for m in names}


def save_task_result(result: TaskResult, meta: ModelMeta, out_dir: Path) -> Path:
    """Write ``result`` (and ``meta``) with mteb's ``ResultCache`` under ``out_dir``; returns the JSON's path."""
    cache = ResultCache(out_dir)
    cache.save_to_cache(result, meta)
    return cache.get_task_result_path(result.task_name, meta)
