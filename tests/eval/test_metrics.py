"""eval.metrics against hand-written trec_eval definitions and MTEB's own computation, on random runs with ties."""
from __future__ import annotations

import math
import random

import pytest

from eval.metrics import evaluate_run, trec_order

K = (1, 3, 5, 10)


def _random_case(seed: int) -> tuple[dict, dict]:
    """Qrels with graded relevance and runs whose scores are drawn from a few values (many ties)."""
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(30)]
    qrels, run = {}, {}
    for q in range(12):
        qid = f"q{q}"
        qrels[qid] = {d: rng.choice([0, 1, 1, 2]) for d in rng.sample(docs, rng.randint(1, 6))}
        run[qid] = {d: float(rng.choice([0.1, 0.5, 0.5, 0.9, 1.0])) for d in rng.sample(docs, rng.randint(3, 20))}
    run["q_unjudged"] = {"d1": 1.0}
    return qrels, run


def _by_hand(qrels: dict, docs: dict, k: int) -> dict[str, float]:
    """trec_eval's definitions, written out."""
    ranked = sorted(docs, key=lambda d: (docs[d], d), reverse=True)[:k]
    rel = [qrels.get(d, 0) for d in ranked]
    n_rel = sum(1 for r in qrels.values() if r > 0)
    dcg = sum(r / math.log2(i + 2) for i, r in enumerate(rel) if r > 0)
    ideal = sorted((r for r in qrels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    hits, ap = 0, 0.0
    for i, r in enumerate(rel):
        if r > 0:
            hits += 1
            ap += hits / (i + 1)
    first = next((i for i, r in enumerate(rel) if r > 0), None)
    return {
        f"ndcg_at_{k}": dcg / idcg if idcg else 0.0,
        f"map_at_{k}": ap / n_rel if n_rel else 0.0,
        f"recall_at_{k}": hits / n_rel if n_rel else 0.0,
        f"precision_at_{k}": hits / k,
        f"hit_rate_at_{k}": float(hits > 0),
        f"mrr_at_{k}": 1.0 / (first + 1) if first is not None else 0.0,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_trec_eval_definitions(seed: int) -> None:
    qrels, run = _random_case(seed)
    result = evaluate_run(qrels, run, K)
    assert set(result["per_query"]) == set(qrels)  # the unjudged query is not scored, as in trec_eval
    for qid, row in result["per_query"].items():
        expected = {}
        for k in K:
            expected.update(_by_hand(qrels[qid], run[qid], k))
        assert row == pytest.approx(expected, abs=1e-9), qid
    for name, value in result["aggregate"].items():
        assert value == pytest.approx(sum(r[name] for r in result["per_query"].values()) / len(qrels))


def test_metrics_equal_mteb() -> None:
    from mteb._evaluators.retrieval_metrics import calculate_retrieval_scores, make_score_dict

    qrels, run = _random_case(3)
    del run["q_unjudged"]
    ours = evaluate_run(qrels, run, K)["aggregate"]
    r = calculate_retrieval_scores(run, qrels, list(K))
    theirs = make_score_dict(ndcg=r.ndcg, _map=r.map, recall=r.recall, precision=r.precision, mrr=r.mrr,
                             naucs={}, naucs_mrr={}, hit_rate=r.hit_rate, task_scores={})
    for name, value in ours.items():
        assert value == pytest.approx(theirs[name], abs=1e-5), name  # MTEB rounds to 5 decimals


def test_trec_order_breaks_ties_by_docid_descending() -> None:
    assert trec_order({"a": 1.0, "c": 1.0, "b": 2.0}) == ["b", "c", "a"]


def test_bad_k() -> None:
    with pytest.raises(ValueError, match="positive"):
        evaluate_run({"q": {"d": 1}}, {"q": {"d": 1.0}}, [0])
