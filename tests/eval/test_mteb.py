"""MTEB (its own pipeline and metrics) and the native evaluator agree on the same local task and model."""
from __future__ import annotations

import warnings
from pathlib import Path

import mteb
import pytest

from eval.datasets import load_retrieval_data
from eval.evaluate import evaluate_task
from eval.mteb_wrapper import MtebRetriever, local_task
from retriever.process_group import RankInfo
from tests.helpers.toy_retrieval import KnownAnswerEncoder, make_beir


def _mteb_scores(model, data) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = mteb.evaluate(model, local_task(data), cache=None, encode_kwargs={"batch_size": 4},
                               show_progress_bar=False)
    return result.task_results[0].scores["test"][0]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    return load_retrieval_data(str(make_beir(tmp_path_factory.mktemp("beir"))), name="ToyRetrieval")


@pytest.mark.parametrize("multi", [False, True])
def test_mteb_equals_native_toy(toy_data, multi: bool) -> None:
    encoder = KnownAnswerEncoder(multi)
    scores = _mteb_scores(MtebRetriever(encoder), toy_data)
    _, native = evaluate_task(encoder, toy_data, RankInfo(), k_values=[1, 3, 5, 10])
    assert scores["main_score"] == pytest.approx(native["aggregate"]["ndcg_at_5"], abs=1e-5)
    assert 0.5 < scores["main_score"] < 1.0  # q0's second relevant page is missed: not a trivial 1.0
    for name in ("ndcg_at_10", "recall_at_3", "map_at_5", "mrr_at_10", "precision_at_1"):
        assert scores[name] == pytest.approx(native["aggregate"][name], abs=1e-5), name


@pytest.mark.parametrize("head", ["dense", "multi"])
def test_mteb_equals_native_tiny_model(toy_data, tiny_model_dir, tmp_path: Path, head: str) -> None:
    """The CLI on a tiny real checkpoint writes metrics/run/table, and mteb scores the same model identically."""
    import json

    import torch

    from eval.retrieval import main, parse_args
    from retriever.model.saved import load_encoder_from_args

    model_dir = tiny_model_dir("qwen2_vl")
    beir = make_beir(tmp_path / "ToyRetrieval")
    argv = ["--model", str(model_dir), "--tasks", str(beir), "--out", str(tmp_path / "out"), "--head", head,
            "--batch_size", "4", "--chunk_pages", "8", "--k", "1,3,5,10"]
    torch.manual_seed(0)  # a plain checkpoint gets a freshly initialised head: same seed, same head
    assert main(argv) == 0
    native = json.loads((tmp_path / "out" / "ToyRetrieval" / "metrics.json").read_text())["aggregate"]
    assert (tmp_path / "out" / "ToyRetrieval" / "run.trec").read_text().count("\n") == 12 * 10
    assert "| ToyRetrieval |" in (tmp_path / "out" / "results.md").read_text()
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["average"] == native

    torch.manual_seed(0)
    encoder = load_encoder_from_args(parse_args(argv), device=torch.device("cpu"))
    scores = _mteb_scores(MtebRetriever(encoder, batch_size=4), toy_data)
    assert scores["main_score"] == pytest.approx(native["ndcg_at_5"], abs=1e-5)
    assert scores["mrr_at_10"] == pytest.approx(native["mrr_at_10"], abs=1e-5)


def test_model_meta_loads_our_checkpoint_by_path(tiny_model_dir, tmp_path: Path) -> None:
    """The meta's loader, called as ModelMeta.load_model calls it, gives the MtebRetriever of a saved retriever; its
    head sets the model type. (load_model itself first requires mteb's ``image`` extra, torchvision, absent here.)"""
    import json

    from eval.mteb_wrapper import model_meta
    from retriever.model.saved import load_encoder, save_encoder

    save_encoder(load_encoder(tiny_model_dir("qwen2_vl"), override={"head": "multi"}), tmp_path / "final")
    meta = model_meta(str(tmp_path / "final"))
    assert meta.model_type == ["late-interaction"] and meta.name == "vlmret/final"
    model = meta.loader(meta.name, revision=meta.revision, **meta.loader_kwargs)
    assert isinstance(model, MtebRetriever) and model.multi_vector
    assert model.mteb_model_meta.loader_kwargs["path"] == str(tmp_path / "final")
    assert model.mteb_model_meta.name == meta.name
    assert json.loads(json.dumps(meta.to_dict(), default=str))["loader"] == "load_mteb_model"  # as mteb saves it


@pytest.mark.parametrize("index", [{"pool_factor": 2}, {"quantize": "int8"}, {"quantize": "binary"}])
def test_mteb_with_index_options_equals_the_native_engine(toy_data, index: dict) -> None:
    """Token pooling and int8 / binary vectors through mteb's exhaustive search give the native engine's metrics
    with the same index settings (two-stage candidates are refused: mteb cannot express them)."""
    from eval.engine import ScoringSettings
    from retriever.index import IndexSettings

    encoder, settings = KnownAnswerEncoder(True), IndexSettings(**index)
    scores = _mteb_scores(MtebRetriever(encoder, index=settings), toy_data)
    _, native = evaluate_task(encoder, toy_data, RankInfo(), k_values=[1, 3, 5, 10],
                              settings=ScoringSettings(index=settings))
    for name in ("ndcg_at_5", "ndcg_at_10", "recall_at_3", "mrr_at_10"):
        assert scores[name] == pytest.approx(native["aggregate"][name], abs=1e-5), name
    with pytest.raises(Exception, match="mteb scores every page exhaustively"):
        MtebRetriever(encoder, index=IndexSettings(candidates="binary"))
