"""Compressed-index search in the evaluator: two-stage search equals its brute-force definition whatever the
chunking; ``eval.retrieval --compare`` writes one table, plot and record per configuration; bad flags are one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eval.datasets import load_retrieval_data
from eval.engine import ScoringSettings
from eval.evaluate import rank_task
from eval.retrieval import main
from retriever.index import IndexSettings
from retriever.index.quantization import to_binary
from retriever.process_group import RankInfo
from tests.helpers.cli import one_error_line
from tests.helpers.toy_retrieval import KnownAnswerEncoder, make_beir


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory) -> Path:
    return make_beir(tmp_path_factory.mktemp("beir"))


def brute_force_two_stage(encoder, data, depth: int, k: int) -> dict[str, list[tuple[str, float]]]:
    """Every page's binary MaxSim (±1 vectors, float64), the top ``depth`` per query (ties: trec_eval's order,
    larger id first), then those by float64 MaxSim, best ``k``."""
    qids = [q for q in data.queries if q in data.qrels]
    queries = encoder.encode_queries([data.queries[q] for q in qids])
    pages = encoder.encode_pages(data.load_images(range(len(data.corpus_ids))), ids=data.corpus_ids)
    sign = [torch.where(p > 0, 1.0, -1.0).double() for p in pages]
    out = {}
    for qid, q in zip(qids, queries):
        qs = torch.where(q > 0, 1.0, -1.0).double()
        first = [(float((qs @ s.T).max(-1).values.sum()), pid) for s, pid in zip(sign, data.corpus_ids)]
        kept = [pid for _, pid in sorted(first, key=lambda t: (-t[0], _desc(t[1])))[:depth]]
        final = {pid: float((q.double() @ pages[data.corpus_ids.index(pid)].double().T).max(-1).values.sum())
                 for pid in kept}
        out[qid] = sorted(final.items(), key=lambda t: (-t[1], _desc(t[0])))[:k]
    return out


def _desc(doc_id: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in doc_id) + (1,)  # larger id first, as trec_eval breaks ties


def test_two_stage_search_is_its_definition_for_any_chunking(beir_dir: Path) -> None:
    data = load_retrieval_data(str(beir_dir), name="toy")
    encoder = KnownAnswerEncoder(True)
    want = brute_force_two_stage(encoder, data, depth=6, k=4)
    index = IndexSettings(candidates="binary", rerank_depth=6)
    for chunk in (3, 7, 23):
        run = rank_task(encoder, data, RankInfo(), 4, ScoringSettings(chunk_pages=chunk, index=index))
        got = {q: sorted(docs.items(), key=lambda t: (-t[1], _desc(t[0]))) for q, docs in run.items()}
        assert {q: [d for d, _ in hits] for q, hits in got.items()} == {q: [d for d, _ in hits]
                                                                        for q, hits in want.items()}, chunk
        for q, hits in got.items():  # toy values are multiples of 1/256: float32 scores are exact
            assert [s for _, s in hits] == [s for _, s in want[q]]


def test_first_stage_binary_scores_are_sign_maxsim() -> None:
    q, p = torch.tensor([[0.5, -0.2, 0.1]]), torch.tensor([[0.3, 0.4, -0.1], [-1.0, -1.0, 1.0]])
    from retriever.index.quantization import binary_maxsim

    assert float(binary_maxsim([to_binary(q)], [to_binary(p)])[0, 0]) == 1.0  # best: 1 - 1 + 1


def test_compare_writes_one_record_per_configuration(tiny_model_dir, beir_dir: Path, tmp_path: Path, capsys) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("- pool_factor: 2\n- quantize: int8\n- {candidates: binary, rerank_depth: 100}\n"
                    "- {name: muvera, candidates: muvera, muvera_k_sim: 2, muvera_r_reps: 2}\n"
                    "- {dim: 64, pool_factor: 2}\n")
    out = tmp_path / "out"
    assert main(["--model", str(tiny_model_dir("qwen2_vl")), "--head", "multi", "--tasks", str(beir_dir), "--out",
                 str(out), "--compare", str(spec), "--dtype", "float64"]) == 0
    task = out / beir_dir.name
    records = json.loads((task / "compression.json").read_text())
    assert [r["name"] for r in records] == ["exact", "pool 2", "int8", "binary top 100 -> float", "muvera",
                                            "dim 64, pool 2"]
    exact, pooled, int8, binary, muvera, half = records
    assert half["dim"] == 64 and half["bytes_per_page"] == pytest.approx(pooled["bytes_per_page"] / 2)
    assert exact["top10_overlap"] == 1.0 and exact["bytes_ratio"] == 1.0 and exact["ndcg_at_10_kept"] == 1.0
    assert pooled["bytes_ratio"] <= 0.5 + 1e-9 and int8["bytes_ratio"] < 0.6
    assert binary["top10_overlap"] == 1.0  # 23 pages < depth 100: every page is reranked exactly
    assert binary["ndcg_at_10"] == exact["ndcg_at_10"] and muvera["ndcg_at_10"] == exact["ndcg_at_10"]
    assert all(0 <= r["ndcg_at_10"] <= 1 and r["query_ms"] > 0 for r in records)
    assert (task / "compression.png").stat().st_size > 0
    assert "| pool 2 |" in (task / "compression.md").read_text() and "| pool 2 |" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--pool_factor", "2"], "error: --pool_factor: {model} is a dense model"),
    (["--head", "multi", "--candidates", "binary", "--rerank_depth", "5"],
     "error: --rerank_depth 5 is below the 100 pages kept per query"),
])
def test_bad_index_flags_are_one_line(flags, message, tiny_model_dir, beir_dir, tmp_path, capsys) -> None:
    model = str(tiny_model_dir("qwen2_vl"))
    line = one_error_line(main, ["--model", model, "--tasks", str(beir_dir), "--out", str(tmp_path / "o"), *flags],
                          capsys)
    assert line.startswith(message.format(model=model))


def test_a_bad_spec_names_the_file_and_configuration(tiny_model_dir, beir_dir, tmp_path, capsys) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([{"pool_factor": 2}, {"quantise": "int8"}]))
    line = one_error_line(main, ["--model", str(tiny_model_dir("qwen2_vl")), "--head", "multi", "--tasks",
                                 str(beir_dir), "--out", str(tmp_path / "o"), "--compare", str(spec)], capsys)
    assert line.startswith(f"error: --compare {spec}: configuration 2: unknown option(s) quantise")


def test_dim_must_be_a_trained_matryoshka_size(tiny_model_dir, beir_dir, tmp_path, capsys) -> None:
    """A multi-vector head trained with Matryoshka sizes is evaluated at one of them; another size, or one larger
    than the head, is one line naming the flag and the model."""
    from retriever.model.encoder import EncoderConfig
    from retriever.model.saved import load_encoder, save_encoder

    model = tmp_path / "model"
    save_encoder(load_encoder(tiny_model_dir("qwen2_vl"), EncoderConfig(backbone="qwen2_vl", head="multi",
                                                                        multi_dim=16, matryoshka_dims=[16, 8])), model)
    base = ["--model", str(model), "--tasks", str(beir_dir), "--k", "1,5"]
    assert main([*base, "--out", str(tmp_path / "ok"), "--dim", "8"]) == 0
    line = one_error_line(main, [*base, "--out", str(tmp_path / "a"), "--dim", "12"], capsys)
    assert line == f"error: --dim 12: {model} was trained with the Matryoshka sizes [8, 16]; give one of them (or no " \
                   "--dim for the full size)"
    line = one_error_line(main, [*base, "--out", str(tmp_path / "b"), "--dim", "32"], capsys)
    assert line.startswith(f"error: {model}: --dim 32 is larger than its embeddings")
