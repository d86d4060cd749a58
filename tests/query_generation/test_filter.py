"""query_generation.filter: each stage's decisions on planted queries, pair format, kept + rejected = input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from query_generation import filter as qfilter
from query_generation.consistency import consistency_reasons, load_retriever
from query_generation.query_rules import RuleSettings, apply_rules, content_key, context_reason
from tests.helpers.query_data import make_store
from tests.helpers.openai_stub import StubServer


@pytest.mark.parametrize("query", [
    "What does this figure show about sales?", "Summarise the table above", "What is shown here?",
    "In this document, who is the CEO?", "What is in the following chart regarding emissions?",
    "According to the passage, why did prices rise?", "Which value is highest in Table 3?",
    "What does the author argue about taxes?", "List the items depicted above", "What is the total in the report?",
    "What do these graphs compare?", "Explain the diagram below please"])
def test_context_dependent_queries_are_caught(query):
    assert context_reason(query) is not None


@pytest.mark.parametrize("query", [
    "What was Siemens' revenue in fiscal 2021?", "tidal energy Wales", "How do heat pumps work in cold climates?",
    "table tennis world championship 2019 winner", "Who wrote the 1987 Brundtland report on sustainable development?",
    "figure skating scoring rules"])
def test_self_contained_queries_pass(query):
    assert context_reason(query) is None


def test_chinese_queries_count_characters_as_words():
    """Chinese has no spaces: each character is a word, so length bounds work; duplicates are caught on
    normalised text."""
    from query_generation.query_rules import word_count

    assert word_count("两个人在海边散步") == 8 and word_count("GPU 的显存") == 4 and word_count("한국어 문장") == 2
    queries = ["二零二一年公司的营业收入是多少？", "二零二一年公司的营业收入是多少", "收入", "太阳能"]
    reasons = apply_rules(queries, ["p1", "p2", "p3", "p4"], [1, 2, 3, 4], RuleSettings(min_words=3))
    assert reasons[0] is None and reasons[1] == "duplicate of line 1 (page p1)"
    assert reasons[2] == "length: 2 words, outside [3, 40]" and reasons[3] is None


def test_rules_decisions():
    queries = ["What was the revenue of Acme in 2020?",  # kept
               "what was the REVENUE of acme in 2020",  # exact duplicate (same page)
               "Acme revenue 2020",  # near duplicate (other page)
               "solar",  # too short
               "What does this table show?",  # context
               "How many employees did Acme have in 2020?"]  # kept
    pages = ["p/1", "p/1", "p/2", "p/3", "p/3", "p/2"]
    reasons = apply_rules(queries, pages, [1, 2, 3, 4, 5, 6], RuleSettings(min_words=2, max_words=12))
    assert reasons[0] is None and reasons[5] is None
    assert reasons[1] == "duplicate of line 1 (same page)"
    assert reasons[2] == "near duplicate of line 1 (page p/1)"
    assert reasons[3].startswith("length: 1 words") and reasons[4].startswith("context-dependent")
    exact_only = apply_rules(queries, pages, [1, 2, 3, 4, 5, 6], RuleSettings(2, 12, near_duplicates=False))
    assert exact_only[2] is None
    assert content_key("What were the revenues of Acme?") == content_key("acme revenue")


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def generated(query: str, page: str) -> dict:
    return {"page_id": page, "doc_id": page.split("/")[0], "query": query, "kind": "specific",
            "backend": "transformers", "model": "m", "prompt": "queries.txt@0123456789ab", "seed": 0}


PLANTED = [generated("What was the revenue of Acme in 2020?", "a/1"),
           generated("What does the chart above show?", "a/1"),
           generated("Which firm built the Oresund bridge?", "a/2"),
           generated("Which firm built the Oresund bridge?", "b/1"),
           generated("How does the bridge chart compare spans?", "b/1")]


def run_filter(tmp_path: Path, *extra: str, records: list[dict] = PLANTED) -> tuple[dict, list[dict], list[dict]]:
    queries = write(tmp_path / "queries.jsonl", records)
    out, rejected = tmp_path / "pairs.jsonl", tmp_path / "rejected.jsonl"
    counts = qfilter.filter_queries(qfilter.build_parser().parse_args(
        ["--queries", str(queries), "--out", str(out), "--rejected", str(rejected), *extra]))
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines()]  # noqa: E731
    assert counts["kept"] + counts["rejected"] == counts["input"] == len(records)
    return counts, read(out), read(rejected)


def test_pairs_keep_provenance_and_rejected_name_stage(tmp_path, capsys):
    counts, kept, rejected = run_filter(tmp_path, "--rules")
    assert counts == {"input": 5, "kept": 3, "rejected": 2}
    assert kept[0] == {"query": "What was the revenue of Acme in 2020?", "pos": ["a/1"], "neg": [],
                       "source": "vlm_generated", "doc_id": "a", "kind": "specific", "backend": "transformers",
                       "model": "m", "prompt": "queries.txt@0123456789ab", "seed": 0, "page_id": "a/1"}
    assert [(r["line"], r["stage"]) for r in rejected] == [(2, "rules"), (4, "rules")]
    assert rejected[1]["reason"] == "duplicate of line 3 (page a/2)"
    table = capsys.readouterr().out
    assert "rules" in table and "5 input = 3 kept" in table


def test_no_stage_keeps_everything(tmp_path):
    counts, kept, rejected = run_filter(tmp_path)
    assert counts["kept"] == 5 and rejected == []


def test_judge_through_the_openai_backend(tmp_path):
    """The stub answers B for queries about charts: the judge drops them, after the rules ran."""
    def answer(body):
        text = body["messages"][0]["content"]
        return "B" if "chart" in text.rsplit("Query:", 1)[1] else "A"

    with StubServer(answer=answer) as stub:
        counts, kept, rejected = run_filter(tmp_path, "--rules", "--judge_model", "judge-llm", "--judge_backend",
                                            "openai", "--judge_base_url", stub.base_url)
    assert [p["query"] for p in kept] == ["What was the revenue of Acme in 2020?", "Which firm built the Oresund bridge?"]
    assert [(r["line"], r["stage"]) for r in rejected] == [(2, "rules"), (4, "rules"), (5, "judge")]
    assert rejected[-1]["reason"] == "judge: context-dependent (answered B)"
    assert len(stub.bodies) == 3 and all(b["temperature"] == 0.0 and b["max_tokens"] == 2 for b in stub.bodies)
    assert any(b["messages"][0]["content"].endswith("Query: What was the revenue of Acme in 2020?\nAnswer:")
               for b in stub.bodies)


def test_judge_rejects_unusable_answers_on_academic_pairs(tmp_path):
    pairs = [{"query": "What is the GDP of Chad?", "answer": "x", "pos": ["docvqa/1"], "neg": [], "source": "docvqa",
              "doc_id": "docvqa/d1", "qid": "q1"}]
    with StubServer(answer=lambda body: "Maybe.") as stub:
        counts, kept, rejected = run_filter(tmp_path, "--judge_model", "j", "--judge_backend", "openai",
                                            "--judge_base_url", stub.base_url, records=pairs)
    assert kept == [] and rejected[0]["reason"] == "judge: unusable answer 'Maybe.' (expected A or B)"
    assert rejected[0]["qid"] == "q1" and rejected[0]["source"] == "docvqa"


class OneHotEncoder:
    """Embeds page ``x/i`` and any query naming ``x/i`` as the same one-hot vector: exact, tie-free scores."""

    multi_vector = False

    def __init__(self, ids: list[str]) -> None:
        self.index = {pid: i for i, pid in enumerate(ids)}

    def _vec(self, page: str) -> torch.Tensor:
        v = torch.full((len(self.index) + 1,), 0.0)
        v[self.index.get(page, len(self.index))] = 1.0
        return v

    def encode_queries(self, texts, batch_size, progress):
        return torch.stack([self._vec(t.split()[-1]) for t in texts])

    def encode_pages(self, images, batch_size, ids, progress):
        return torch.stack([self._vec(pid) for pid in ids])


def test_retrieval_consistency_decisions(tmp_path):
    ids = ["a/1", "a/2", "b/1", "b/2"]
    store = make_store(tmp_path / "store", ids)
    from data_prep.store import PageStore

    reasons = consistency_reasons(OneHotEncoder(ids), PageStore(store),
                                  ["about a/2", "about b/1", "about b/2", "about a/1"],
                                  [["a/2"], ["a/1"], ["b/2"], ["zz/9"]], top_k=1, chunk_pages=3)
    assert reasons[0] is None
    assert reasons[1] == "retrieval: no positive page in the top 1 (rank 1: b/1)"
    assert reasons[2] is None  # found in the second chunk of pages
    assert reasons[3].startswith("retrieval: positive page(s) ['zz/9'] not in store")


def test_retrieval_stage_with_a_tiny_checkpoint(tmp_path, tiny_model_dir):
    """End to end through the real loader and encoder; top_k = corpus size, so every stored page is kept."""
    ids = ["a/1", "a/2", "b/1"]
    store = make_store(tmp_path / "store", ids)
    assert hasattr(load_retriever(str(tiny_model_dir("qwen2_vl"))), "encode_pages")
    records = [generated("Which firm built the Oresund bridge?", "a/2"), generated("tidal power Wales", "zz/1")]
    counts, kept, rejected = run_filter(tmp_path, "--retriever", str(tiny_model_dir("qwen2_vl")), "--store",
                                        str(store), "--top_k", "3", records=records)
    assert [p["pos"] for p in kept] == [["a/2"]] and rejected[0]["stage"] == "retrieval"


def test_bad_input_line_is_named(tmp_path):
    path = write(tmp_path / "q.jsonl", [PLANTED[0], {"query": "x"}])
    with pytest.raises(ValueError, match=r"q.jsonl: line 2: neither a generated query"):
        qfilter.read_candidates(path)
