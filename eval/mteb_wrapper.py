"""Our encoders as an MTEB model, and local BEIR folders as MTEB retrieval tasks.

:class:`MtebRetriever` implements mteb's ``EncoderProtocol`` (as an ``AbsEncoder``): ``encode`` receives mteb's
DataLoader of batches (``"text"`` for queries, ``"image"`` for pages) and returns ``[N, D]`` (dense) or a
zero-padded ``[N, L, D]`` (multi-vector); ``similarity`` is the dot product or MaxSim from
:mod:`retriever.scoring`, where a multi-vector token is padding exactly when it is all zeros (real tokens are
L2-normalised, never zero). With it ``mteb.evaluate(MtebRetriever.from_pretrained(path), mteb.get_benchmark(
"ViDoRe(v1)"))`` runs MTEB's own pipeline and metrics on our checkpoints. ``index`` applies the index compression
options mteb's exhaustive search can express (:mod:`retriever.index`): token pooling of pages and int8 / binary
vectors (as the float vectors whose dot products they give: dequantized, or ±1); two-stage candidates cannot.

:func:`local_task` wraps a :class:`eval.datasets.RetrievalData` as an ``AbsTaskRetrieval`` (main score
``ndcg_at_5``, as ViDoRe), which is how the tests check that MTEB and the native evaluator agree.

:func:`model_meta` is an mteb ``ModelMeta`` for a checkpoint path (ours or a published format ``load_encoder``
reads), whose ``loader`` is :func:`load_mteb_model`: ``model_meta("runs/x/final").load_model()`` gives the
:class:`MtebRetriever`, and results are saved under the meta's name (``vlmret/<folder name>``).
"""
from __future__ import annotations

from typing import Any

import torch
from datasets import Dataset
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from torch import Tensor

from data_prep.errors import InputError
from eval.datasets import RetrievalData
from eval.engine import Encoder
from retriever.index import IndexSettings
from retriever.index.pooling import pool_pages
from retriever.index.quantization import as_float
from retriever.model.saved import load_encoder, saved_encoder_config
from retriever.scoring import dense_scores, maxsim_blocked

__all__ = ["MtebRetriever", "load_mteb_model", "local_task", "model_meta"]


def model_meta(path: str, revision: str = "local", multi_vector: bool | None = None) -> ModelMeta:
    """mteb's metadata of the checkpoint at ``path``; ``multi_vector`` defaults to the checkpoint's saved head."""
    if multi_vector is None:
        config = saved_encoder_config(path)
        multi_vector = config is not None and config.head == "multi"
    return ModelMeta.create_empty(overwrites={
        "name": f"vlmret/{str(path).rstrip('/').split('/')[-1]}", "revision": revision,
        "loader": load_mteb_model, "loader_kwargs": {"path": str(path)}, "modalities": ["image", "text"],
        "framework": ["PyTorch"], "model_type": ["late-interaction" if multi_vector else "dense"],
        "similarity_fn_name": ScoringFunction.MAX_SIM if multi_vector else ScoringFunction.DOT_PRODUCT})


def load_mteb_model(name: str, revision: str | None = None, *, path: str, device: str | None = None,
                    dtype: torch.dtype | str | None = None, trust_remote_code: bool = False,
                    batch_size: int = 8) -> MtebRetriever:
    """``ModelMeta.loader``: the checkpoint at ``path`` (``name``/``revision`` only label the results)."""
    device = device or ("cuda" if torch.cuda.is_available() else None)
    encoder = load_encoder(path, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    return MtebRetriever(encoder, name=name, revision=revision or "local", batch_size=batch_size, path=path)


class MtebRetriever(AbsEncoder):
    """An :class:`eval.engine.Encoder` (e.g. ``RetrieverEncoder``) exposed to mteb."""

    def __init__(self, encoder: Encoder, name: str = "vlmret/model", revision: str = "local",
                 batch_size: int = 8, path: str | None = None, index: IndexSettings = IndexSettings()) -> None:
        if index.candidates != "exact":
            raise InputError(f"--candidates {index.candidates}: mteb scores every page exhaustively, so a two-stage "
                             "search cannot run through it (use eval.retrieval's engine)")
        if not encoder.multi_vector and not index.exact:
            raise InputError("index compression applies to multi-vector models; this one is dense")
        self.encoder = encoder
        self.batch_size = batch_size
        self.multi_vector = encoder.multi_vector
        self.index = index
        meta = model_meta(path or name, revision, self.multi_vector)
        unloadable = {} if path else {"loader": None, "loader_kwargs": {}}  # an in-memory encoder has no path
        self.mteb_model_meta = meta.model_copy(update={"name": name, **unloadable})

    @classmethod
    def from_pretrained(cls, path: str, trust_remote_code: bool = False, dtype: torch.dtype | str | None = None,
                        **kwargs: Any) -> MtebRetriever:
        """Load a checkpoint with :func:`retriever.model.saved.load_encoder` (on the GPU when there is one)."""
        meta = model_meta(path)
        return load_mteb_model(meta.name, meta.revision, path=path, dtype=dtype,
                               trust_remote_code=trust_remote_code, **kwargs)

    def encode(self, inputs, *, task_metadata: TaskMetadata, hf_split: str, hf_subset: str,
               prompt_type=None, **kwargs: Any) -> Tensor:
        """Queries (``text``) or pages (``image``) of every batch, in order."""
        out: list[Tensor] = []
        for batch in inputs:
            if "image" in batch:
                images = [img.convert("RGB") for img in batch["image"]]
                emb = self.encoder.encode_pages(images, batch_size=self.batch_size, ids=None, progress=False)
                if self.multi_vector:
                    emb = pool_pages(list(emb), self.index.pool_factor, self.index.pool_renormalize)
            else:
                emb = self.encoder.encode_queries(list(batch["text"]), batch_size=self.batch_size, progress=False)
            if self.multi_vector:
                emb = [as_float(e, self.index.quantize) for e in emb]
            out.extend(emb if self.multi_vector else emb.unbind(0))
        if self.multi_vector:
            return torch.nn.utils.rnn.pad_sequence(out, batch_first=True)
        return torch.stack(out)

    def similarity(self, embeddings1: Tensor, embeddings2: Tensor) -> Tensor:
        """Dot product (dense) or MaxSim with all-zero tokens treated as padding (multi-vector)."""
        q, d = torch.as_tensor(embeddings1), torch.as_tensor(embeddings2)
        if not self.multi_vector:
            return dense_scores(q.float(), d.float())
        return maxsim_blocked(q.float(), q.ne(0).any(-1), d.float(), d.ne(0).any(-1))

    def similarity_pairwise(self, embeddings1: Tensor, embeddings2: Tensor) -> Tensor:
        """Score of each (query i, page i) pair."""
        q, d = torch.as_tensor(embeddings1), torch.as_tensor(embeddings2)
        if not self.multi_vector:
            return (q.float() * d.float()).sum(-1)
        return torch.stack([self.similarity(q[i:i + 1], d[i:i + 1])[0, 0] for i in range(len(q))])


def local_task(data: RetrievalData, split: str = "test") -> AbsTaskRetrieval:
    """An mteb text-to-image retrieval task holding ``data`` (already loaded; nothing is downloaded)."""
    metadata = TaskMetadata(
        name=data.name, description=f"local BEIR-layout retrieval task {data.name}", reference=None,
        dataset={"path": "local", "revision": "local"}, type="Any2AnyRetrieval", category="t2i",
        modalities=["text", "image"], eval_splits=[split], eval_langs=["eng-Latn"], main_score="ndcg_at_5",
        date=None, domains=None, task_subtypes=None, license=None, annotations_creators=None, dialect=None,
        sample_creation=None, bibtex_citation="",
    )

    class LocalTask(AbsTaskRetrieval):
        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            qids = list(data.queries)
            corpus = Dataset.from_dict({"id": data.corpus_ids,
                                        "image": data.load_images(range(len(data.corpus_ids)))})
            self.dataset = {"default": {split: RetrievalSplitData(
                queries=Dataset.from_dict({"id": qids, "text": [data.queries[q] for q in qids]}),
                corpus=corpus, relevant_docs=data.qrels, top_ranked=None)}}
            self.data_loaded = True

    LocalTask.metadata = metadata
    return LocalTask()
