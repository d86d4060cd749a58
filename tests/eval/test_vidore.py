"""ViDoRe v2 as the leaderboard scores it: per language subset (mteb's own task class loads a local copy in the hub
layout), the task score averaged over subsets as mteb's TaskResult does, equal to ``mteb.evaluate``."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import mteb
import pytest
from datasets import Dataset, Features, Image as ImageFeature, Value

from eval.datasets import resolve_tasks
from eval.engine import ScoringSettings
from eval.evaluate import evaluate_subsets
from eval.mteb_tasks import get_task, load_subsets, subset_average, task_result
from eval.mteb_wrapper import MtebRetriever
from eval.retrieval import evaluate_spec, parse_args
from retriever.process_group import RankInfo
from tests.helpers.toy_retrieval import KnownAnswerEncoder, page_image

TASK = "Vidore2ESGReportsRetrieval"
N_PAGES = 12
# per language: (query number, relevant page); a query is answered by the page with its number, so a mismatch is
# a miss. Languages differ in size and difficulty: the mean over subsets differs from the mean over all queries.
QUERIES = {"english": [(0, 0), (1, 1), (2, 2), (3, 3)], "french": [(4, 4), (5, 9)],
           "german": [(6, 6), (7, 7), (8, 1)], "spanish": [(9, 9), (10, 10), (11, 2), (2, 2), (5, 5)]}


def make_vidore_v2(root: Path) -> Path:
    """The hub layout of a ViDoRe v2 dataset: ``corpus``/``queries``/``qrels`` configs named by README.md, the
    queries of all languages in one table with a ``language`` column."""
    corpus = Dataset.from_dict({"corpus-id": list(range(N_PAGES)), "image": [page_image(i) for i in range(N_PAGES)]},
                               features=Features({"corpus-id": Value("int64"), "image": ImageFeature()}))
    queries: dict[str, list] = {"query-id": [], "query": [], "language": []}
    qrels: dict[str, list] = {"query-id": [], "corpus-id": [], "score": []}
    for lang, rows in QUERIES.items():
        for number, page in rows:
            qid = len(queries["query-id"])
            queries["query-id"].append(qid), queries["query"].append(f"page {number}?"), queries["language"].append(lang)
            qrels["query-id"].append(qid), qrels["corpus-id"].append(page), qrels["score"].append(1)
    for name, table in (("corpus", corpus), ("queries", Dataset.from_dict(queries)), ("qrels", Dataset.from_dict(qrels))):
        (root / name).mkdir(parents=True)
        table.to_parquet(str(root / name / "test-00000-of-00001.parquet"))
    configs = "".join(f"- config_name: {n}\n  data_files:\n  - split: test\n    path: {n}/test-*.parquet\n"
                      for n in ("corpus", "queries", "qrels"))
    (root / "README.md").write_text(f"---\nconfigs:\n{configs}---\n")
    return root


@pytest.fixture(scope="module")
def vidore_dir(tmp_path_factory) -> Path:
    return make_vidore_v2(tmp_path_factory.mktemp("esg_reports_v2"))


def _mteb_result(model, task) -> mteb.TaskResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mteb.evaluate(model, task, cache=None, encode_kwargs={"batch_size": 4},
                             show_progress_bar=False).task_results[0]


@pytest.mark.parametrize("multi", [False, True])
def test_subsets_equal_mteb(vidore_dir: Path, multi: bool) -> None:
    encoder = KnownAnswerEncoder(multi)
    task = get_task(TASK, str(vidore_dir))
    subsets = load_subsets(task)
    assert sorted(subsets) == sorted(task.metadata.eval_langs)  # the subsets are mteb's, not ours
    assert {s: len(d.qrels) for s, d in subsets.items()} == {s: len(r) for s, r in QUERIES.items()}
    _, native = evaluate_subsets(encoder, subsets, RankInfo(), k_values=[1, 3, 5, 10],
                                 settings=ScoringSettings(chunk_pages=5))
    ours = task_result(task, "test", {s: m["aggregate"] for s, m in native.items()}, 0.0)

    reference = _mteb_result(MtebRetriever(encoder), get_task(TASK, str(vidore_dir)))
    theirs = {s["hf_subset"]: s for s in reference.scores["test"]}
    assert sorted(theirs) == sorted(native)
    for subset, metrics in native.items():
        for name in ("ndcg_at_5", "ndcg_at_10", "recall_at_3", "map_at_5", "mrr_at_10", "precision_at_1"):
            assert metrics["aggregate"][name] == pytest.approx(theirs[subset][name], abs=1e-5), (subset, name)
    assert ours.get_score() == pytest.approx(reference.get_score(), abs=1e-5)
    scored = [row["ndcg_at_5"] for m in native.values() for row in m["per_query"].values()]
    pooled = sum(scored) / len(scored)
    assert abs(ours.get_score() - pooled) > 0.01  # averaging per subset is what makes the score MTEB's
    assert subset_average(ours)["main_score"] == ours.get_score()


def test_cli_writes_subsets_and_mteb_results(vidore_dir: Path, tmp_path: Path) -> None:
    args = parse_args(["--model", str(tmp_path / "toy"), "--tasks", f"{TASK}={vidore_dir}", "--out",
                       str(tmp_path / "out"), "--k", "1,5,10", "--mteb_results", str(tmp_path / "mteb")])
    [spec] = resolve_tasks(args.tasks)
    summary = evaluate_spec(KnownAnswerEncoder(True), spec, args, RankInfo(), ScoringSettings())
    written = json.loads((tmp_path / "out" / TASK / "metrics.json").read_text())
    assert written["main_score"] == "ndcg_at_5" and sorted(written["subsets"]) == sorted(QUERIES)
    assert written["aggregate"] == summary["aggregate"]
    assert written["aggregate"]["main_score"] == pytest.approx(
        sum(s["ndcg_at_5"] for s in written["subsets"].values()) / len(QUERIES))
    assert "french/" in (tmp_path / "out" / TASK / "run.trec").read_text()
    [path] = (tmp_path / "mteb" / "results").glob(f"*/*/{TASK}.json")
    loaded = mteb.TaskResult.from_disk(path)
    assert loaded.get_score() == pytest.approx(written["aggregate"]["main_score"], abs=1e-6)
    assert json.loads((path.parent / "model_meta.json").read_text())["model_type"] == ["late-interaction"]


QUERIES_V3 = {**QUERIES, "italian": [(3, 3)], "portuguese": [(1, 0), (2, 2)]}


def make_vidore_v3(root: Path) -> Path:
    """The hub layout of a ViDoRe v3 (mteb format) dataset: ``<subset>-corpus`` / ``-queries`` / ``-qrels`` configs."""
    configs = []
    for lang, rows in QUERIES_V3.items():
        tables = {"corpus": Dataset.from_dict({"id": [str(i) for i in range(N_PAGES)],
                                               "image": [page_image(i) for i in range(N_PAGES)]},
                                              features=Features({"id": Value("string"), "image": ImageFeature()})),
                  "queries": Dataset.from_dict({"id": [f"{lang}{i}" for i in range(len(rows))],
                                                "text": [f"page {n}?" for n, _ in rows]}),
                  "qrels": Dataset.from_dict({"query-id": [f"{lang}{i}" for i in range(len(rows))],
                                              "corpus-id": [str(p) for _, p in rows], "score": [1] * len(rows)})}
        for part, table in tables.items():
            (root / lang / part).mkdir(parents=True)
            table.to_parquet(str(root / lang / part / "test-00000-of-00001.parquet"))
            configs.append(f"- config_name: {lang}-{part}\n  data_files:\n  - split: test\n"
                           f"    path: {lang}/{part}/test-*.parquet\n")
    (root / "README.md").write_text("---\nconfigs:\n" + "".join(configs) + "---\n")
    return root


def test_v3_layout_equals_mteb(tmp_path: Path) -> None:
    """ViDoRe v3's per-subset configs (mteb's default loader), main score ndcg_at_10."""
    task_name = "Vidore3FinanceEnRetrieval"
    root = make_vidore_v3(tmp_path / "v3")
    task = get_task(task_name, str(root))
    encoder = KnownAnswerEncoder(True)
    _, native = evaluate_subsets(encoder, load_subsets(task), RankInfo(), k_values=[1, 5, 10])
    ours = task_result(task, "test", {s: m["aggregate"] for s, m in native.items()}, 0.0)
    theirs = _mteb_result(MtebRetriever(encoder), get_task(task_name, str(root)))
    assert task.metadata.main_score == "ndcg_at_10"
    assert sorted(s["hf_subset"] for s in theirs.scores["test"]) == sorted(native) == sorted(QUERIES_V3)
    for subset in theirs.scores["test"]:
        assert native[subset["hf_subset"]]["aggregate"]["ndcg_at_10"] == pytest.approx(subset["main_score"], abs=1e-5)
    assert ours.get_score() == pytest.approx(theirs.get_score(), abs=1e-5)
