"""Loading an evaluation task: the one place that turns a ``--tasks`` (``python -m eval.retrieval``) or
``--eval_data`` (training's evaluation) entry into data.

An entry (:class:`eval.datasets.TaskSource`, from :func:`eval.datasets.resolve_tasks`) is either an MTEB task,
loaded per language subset by the installed mteb's own task class (:mod:`eval.mteb_tasks`), or a BEIR/ViDoRe
folder, hub dataset or held-out pairs file (:func:`eval.datasets.load_retrieval_data`), whose corpus a page store
can replace and which is wrapped as a local mteb task (:func:`eval.mteb_wrapper.local_task`), so that both kinds
are aggregated and saved alike.
"""
from __future__ import annotations

from mteb.abstasks.abstask import AbsTask

from data_prep.errors import InputError
from eval.datasets import RetrievalData, TaskSource, load_retrieval_data
from eval.mteb_tasks import get_task, load_subsets
from eval.mteb_wrapper import local_task

__all__ = ["load_task"]


def load_task(spec: TaskSource, split: str, page_store: str | None = None,
              page_store_flag: str = "--page_store") -> tuple[AbsTask, dict[str, RetrievalData]]:
    """The mteb task of ``spec`` and its ``{subset: data}`` for ``split``. ``page_store`` (the value of the flag
    ``page_store_flag``, which an error names) replaces the corpus of a BEIR folder or pairs file; an MTEB task
    refuses it."""
    if spec.mteb:
        if page_store:
            raise InputError(f"{page_store_flag} replaces the corpus of a BEIR folder or pairs file, not of the MTEB "
                             f"task {spec.name}")
        task = get_task(spec.name, spec.source)
        return task, load_subsets(task, split)
    data = load_retrieval_data(spec.source, split, spec.name, page_store)
    return local_task(data, split), {"default": data}
