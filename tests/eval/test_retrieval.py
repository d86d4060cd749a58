"""Native evaluator: known answers with toy encoders, 1 vs 2 ranks identical, page store corpus, bad input.

Run as a script (``torchrun ... tests/eval/test_retrieval.py DATA OUT HEAD``) it evaluates the toy encoder on
DATA under the launched process group and writes OUT/run.json on rank 0.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from eval.datasets import RetrievalData, load_retrieval_data
from eval.engine import ScoringSettings
from eval.evaluate import evaluate_task
from eval.report import markdown_table
from retriever.process_group import RankInfo, joined_process_group
from tests.helpers.paths import REPO_ROOT
from tests.helpers.toy_retrieval import N_PAGES, KnownAnswerEncoder, make_beir, page_image


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory) -> Path:
    return make_beir(tmp_path_factory.mktemp("beir"))


@pytest.mark.parametrize("multi", [False, True])
def test_known_answers(beir_dir: Path, multi: bool) -> None:
    data = load_retrieval_data(str(beir_dir), name="toy")
    run, metrics = evaluate_task(KnownAnswerEncoder(multi), data, RankInfo(), k_values=[1, 5],
                                 settings=ScoringSettings(chunk_pages=4))
    for qid, docs in run.items():
        best = max(docs, key=docs.get)
        assert best == "p" + qid[1:]  # the page with the query's number wins
        assert len(docs) == 5
    agg = metrics["aggregate"]
    assert agg["precision_at_1"] == 1.0 and agg["mrr_at_5"] == 1.0
    assert agg["recall_at_1"] == pytest.approx((0.5 + 11) / 12)  # q0 has two relevant pages
    assert "| toy |" in markdown_table({"toy": agg})


def test_resume_from_saved_state(beir_dir: Path, tmp_path: Path) -> None:
    """A crash mid-task leaves a state file; the rerun continues from it and gives the same run."""
    data = load_retrieval_data(str(beir_dir), name="toy")
    info = RankInfo()
    expected, _ = evaluate_task(KnownAnswerEncoder(True), data, info, k_values=[3],
                                settings=ScoringSettings(chunk_pages=5))

    class Crash(KnownAnswerEncoder):
        calls = 0

        def encode_pages(self, images, batch_size=8, ids=None, progress=False):
            Crash.calls += 1
            if Crash.calls == 3:
                raise RuntimeError("simulated crash")
            return super().encode_pages(images, batch_size, ids, progress)

    with pytest.raises(RuntimeError, match="simulated"):
        evaluate_task(Crash(True), data, info, k_values=[3], settings=ScoringSettings(chunk_pages=5, state_dir=tmp_path))
    assert len(list(tmp_path.glob("*.pt"))) == 1
    seen: list[int] = []

    class Counting(KnownAnswerEncoder):
        def encode_pages(self, images, batch_size=8, ids=None, progress=False):
            seen.append(len(images))
            return super().encode_pages(images, batch_size, ids, progress)

    resumed, _ = evaluate_task(Counting(True), data, info, k_values=[3],
                               settings=ScoringSettings(chunk_pages=5, state_dir=tmp_path))
    assert resumed == expected
    assert sum(seen) == N_PAGES - 10  # two chunks of 5 were already scored
    assert not list(tmp_path.glob("*.pt"))


class OtherAnswers(KnownAnswerEncoder):
    """Another model: the query about page i finds page i + 1."""

    def encode_queries(self, texts, batch_size=8, progress=False):
        return self._stack([self._vectors(int(re.search(r"\d+", t).group()) + 1, t) for t in texts])


def _watch_pages(encoder: KnownAnswerEncoder, crash_at: int | None = None) -> list[int]:
    """Make ``encoder`` record the size of every page batch it encodes (and fail on call ``crash_at``)."""
    seen: list[int] = []
    encode = encoder.encode_pages

    def encode_pages(images, batch_size=8, ids=None, progress=False):
        seen.append(len(images))
        if len(seen) == crash_at:
            raise RuntimeError("simulated crash")
        return encode(images, batch_size, ids, progress)

    encoder.encode_pages = encode_pages
    return seen


def _other_queries(data: RetrievalData) -> RetrievalData:
    """As many queries as ``data`` has, under other ids, each about the next page."""
    queries = {f"r{i}": f"about page {i + 1}" for i in range(0, N_PAGES, 2)}
    qrels = {f"r{i}": {f"p{i + 1}": 1} for i in range(0, N_PAGES - 1, 2)} | {f"r{N_PAGES - 1}": {"p0": 1}}
    return RetrievalData(data.name, data.corpus_ids, data.load_images, queries, qrels)


@pytest.mark.parametrize("change", ["model", "queries"])
def test_a_state_made_by_another_model_or_queries_is_scored_again(beir_dir: Path, tmp_path: Path, change: str,
                                                                  caplog) -> None:
    """A run killed with model A (or other queries) leaves its state; the rerun with model B does not resume it
    but scores every chunk, warns naming what changed, and gives the same run as B from scratch."""
    data = load_retrieval_data(str(beir_dir), name="toy")
    second_model = OtherAnswers if change == "model" else KnownAnswerEncoder
    second_data = data if change == "model" else _other_queries(data)
    expected, _ = evaluate_task(second_model(True, "B" if change == "model" else "A"), second_data, RankInfo(),
                                k_values=[3], settings=ScoringSettings(chunk_pages=5))
    state = ScoringSettings(chunk_pages=5, state_dir=tmp_path)
    first = KnownAnswerEncoder(True, "A")
    _watch_pages(first, crash_at=3)
    with pytest.raises(RuntimeError, match="simulated"):
        evaluate_task(first, data, RankInfo(), k_values=[3], settings=state)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    second = second_model(True, "B" if change == "model" else "A")
    seen = _watch_pages(second)
    with caplog.at_level("WARNING", logger="eval.engine"):
        got, _ = evaluate_task(second, second_data, RankInfo(), k_values=[3], settings=state)
    assert got == expected
    assert sum(seen) == N_PAGES
    named = "model checkpoint 'A' (this run: 'B')" if change == "model" else "query ids '"
    assert named in caplog.text and "scoring from the first chunk again" in caplog.text
    assert not list(tmp_path.glob("*.pt"))


def test_a_finished_task_is_reused_only_by_the_same_model(beir_dir: Path, tmp_path: Path, caplog) -> None:
    """OUT/<task>/metrics.json records what made it: the same model reuses it, another one evaluates again."""
    from eval.datasets import resolve_tasks
    from eval.retrieval import parse_args, run_tasks

    def run(encoder: KnownAnswerEncoder, out: Path) -> dict[str, dict[str, float]]:
        args = parse_args(["--model", str(tmp_path / "toy"), "--tasks", str(beir_dir), "--out", str(out), "--k",
                           "1,5"])
        return run_tasks(encoder, resolve_tasks(args.tasks), args, RankInfo(), ScoringSettings(chunk_pages=5))

    first = run(KnownAnswerEncoder(True, "A"), tmp_path / "out")
    expected = run(OtherAnswers(True, "B"), tmp_path / "fresh")
    assert expected != first
    again = KnownAnswerEncoder(True, "A")
    seen = _watch_pages(again)
    assert run(again, tmp_path / "out") == first and seen == []
    with caplog.at_level("WARNING", logger="eval.retrieval"):
        assert run(OtherAnswers(True, "B"), tmp_path / "out") == expected
    assert "model checkpoint 'A' (this run: 'B')" in caplog.text and "evaluating the task again" in caplog.text


def test_missing_corpus_ids_warn_with_counts(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "beir", extra_qrels=True)
    with pytest.warns(UserWarning, match=r"2 qrels rows name 2 corpus ids absent"):
        load_retrieval_data(str(root))


def test_bad_folders_name_the_problem(tmp_path: Path) -> None:
    from datasets import Dataset

    with pytest.raises(FileNotFoundError, match="no 'queries' table"):
        load_retrieval_data(str(tmp_path))
    Dataset.from_dict({"qid": ["q1"], "text_x": ["a"]}).to_parquet(str(tmp_path / "queries.parquet"))
    Dataset.from_dict({"query-id": ["q1"], "corpus-id": ["p1"], "score": [1]}).to_parquet(str(tmp_path / "qrels.parquet"))
    with pytest.raises(ValueError, match=r"queries table has columns \['qid', 'text_x'\]"):
        load_retrieval_data(str(tmp_path))


def test_task_registry_comes_from_mteb(beir_dir: Path) -> None:
    from eval.datasets import TaskSource, resolve_tasks

    v1 = resolve_tasks(["vidore_v1"])
    assert len(v1) == 10 and TaskSource("VidoreDocVQARetrieval", None, mteb=True) in v1
    assert len(resolve_tasks(["vidore_v2"])) >= 4 and len(resolve_tasks(["vidore_v3"])) >= 8
    assert resolve_tasks(["VidoreArxivQARetrieval", f"Vidore2ESGReportsRetrieval={beir_dir}", str(beir_dir),
                          "org/some_beir"]) == [
        TaskSource("VidoreArxivQARetrieval", None, mteb=True),
        TaskSource("Vidore2ESGReportsRetrieval", str(beir_dir), mteb=True), TaskSource(beir_dir.name, str(beir_dir)),
        TaskSource("some_beir", "org/some_beir")]
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        resolve_tasks([f"Vidore2ESGReportsRetrieval={beir_dir}/nowhere"])


def test_page_store_as_corpus(beir_dir: Path, tmp_path: Path) -> None:
    store_mod = pytest.importorskip("data_prep.store")
    import io

    with store_mod.PageStoreWriter(tmp_path / "pages") as writer:
        for i in range(N_PAGES):
            buf = io.BytesIO()
            page_image(i).save(buf, format="PNG")
            writer.add(f"p{i}", buf.getvalue())
    data = load_retrieval_data(str(beir_dir), name="toy", page_store=tmp_path / "pages")
    assert sorted(data.corpus_ids) == sorted(f"p{i}" for i in range(N_PAGES))
    run, metrics = evaluate_task(KnownAnswerEncoder(False), data, RankInfo(), k_values=[1])
    assert metrics["aggregate"]["precision_at_1"] == 1.0


@pytest.mark.distributed
@pytest.mark.parametrize("multi", [False, True])
def test_one_and_two_ranks_identical(beir_dir: Path, tmp_path: Path, multi: bool) -> None:
    data = load_retrieval_data(str(beir_dir), name="toy")
    single, _ = evaluate_task(KnownAnswerEncoder(multi), data, RankInfo(), k_values=[1, 5, 10],
                              settings=ScoringSettings(chunk_pages=3))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, str(beir_dir), str(tmp_path), "multi" if multi else "dense"]
    proc = subprocess.run(cmd, env=env, timeout=120, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # exact: the toy scores are exact in float32 (dyadic values), so sharding cannot change a bit of them
    assert json.loads((tmp_path / "run.json").read_text()) == single


@pytest.mark.distributed
def test_dead_rank_fails_instead_of_hanging(beir_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOY_KILL_RANK": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, str(beir_dir), str(tmp_path), "dense"]
    proc = subprocess.run(cmd, env=env, timeout=120, capture_output=True, text=True)
    assert proc.returncode != 0


@pytest.mark.distributed
def test_eval_dist_sh_matches_single_process(beir_dir: Path, tiny_model_dir, tmp_path: Path) -> None:
    """shell/eval_dist.sh with 2 CPU ranks on a tiny checkpoint writes the same run and metrics as 1 process.

    Batch size 2 and chunks of 4 make the encoder batches the same in both launches (12 queries -> 6 + 6,
    23 pages -> 12 + 11): a real model's last float bits depend on which inputs share a padded batch. Both
    launches compute on one thread (the ranks get OMP_NUM_THREADS=1), since a machine's thread count may split a
    reduction differently.
    """
    from eval.retrieval import main

    args = ["--model", str(tiny_model_dir("qwen2_vl")), "--tasks", str(beir_dir), "--head", "dense",
            "--batch_size", "2", "--chunk_pages", "4", "--k", "1,5,10"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(args + ["--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    script = REPO_ROOT / "shell" / "eval_dist.sh"
    with socket.socket() as probe:  # a port free right now (other jobs on this machine may hold fixed ones)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "NPROC_PER_NODE": "2", "MASTER_PORT": str(port), "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(script), *args, "--out", str(tmp_path / "two")], env=env, timeout=300,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("run.trec", "metrics.json"):
        assert (tmp_path / "two" / beir_dir.name / name).read_text() == (tmp_path / "one" / beir_dir.name / name).read_text()


if __name__ == "__main__":
    with joined_process_group(timedelta(seconds=20)) as info:
        if os.environ.get("TOY_KILL_RANK") == str(info.rank):
            os._exit(3)
        toy = load_retrieval_data(sys.argv[1], name="toy")
        result, _ = evaluate_task(KnownAnswerEncoder(sys.argv[3] == "multi"), toy, info, k_values=[1, 5, 10],
                                  settings=ScoringSettings(chunk_pages=3))
        if info.is_main:
            (Path(sys.argv[2]) / "run.json").write_text(json.dumps(result))
