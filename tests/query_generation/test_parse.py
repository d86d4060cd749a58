"""Parsing of model answers and prompt files."""
from __future__ import annotations

import pytest

from query_generation.parse import ParseError, parse_queries
from query_generation.prompt import GENERATION_SLOTS, JUDGE_SLOTS, PromptFile


@pytest.mark.parametrize("text", [
    '{"queries": [{"query": "tidal energy Wales", "kind": "topical"}, {"query": "Who built it?", "kind": "specific"}]}',
    'Sure! Here are the queries:\n```json\n{"queries": [{"query": "tidal energy Wales", "kind": "topical"},'
    ' {"query": "Who built it?", "kind": "specific"}]}\n```\nHope this helps.',
    'The answer is {"queries": [{"query": "tidal  energy\\nWales", "kind": " topical "}, '
    '{"query": "Who built it?", "kind": "specific"}]} as requested.',
])
def test_object_forms(text):
    queries = parse_queries(text)
    assert [(q.text, q.kind) for q in queries] == [("tidal energy Wales", "topical"), ("Who built it?", "specific")]


@pytest.mark.parametrize("text", ['["tidal energy Wales", "Who built it?"]',
                                  'Queries:\n```\n["tidal energy Wales", "Who built it?"]\n```',
                                  'I think [1, 2] is wrong; use ["tidal energy Wales", "Who built it?"] instead'])
def test_bare_list_forms(text):
    assert [(q.text, q.kind) for q in parse_queries(text)] == [("tidal energy Wales", None), ("Who built it?", None)]


def test_limit_and_blank_entries():
    queries = parse_queries('{"queries": ["a b", "  ", {"query": ""}, {"kind": "x"}, "c d", "e f"]}', limit=2)
    assert [q.text for q in queries] == ["a b", "c d"]


@pytest.mark.parametrize("text", ["", "no json here", "{not json}", '{"answer": "x"}', "[1, 2, 3]",
                                  '{"queries": []}', "```json\n{\"queries\": [\n```", '{"queries": [{"q": 1}]}'])
def test_unparseable_answers_raise(text):
    with pytest.raises(ParseError):
        parse_queries(text)


def test_prompt_file_slots(tmp_path):
    good = tmp_path / "p.txt"
    good.write_text("# a comment {query}\nBefore\n{image}\nWrite {num_queries} queries as {\"queries\": []}.\n")
    prompt = PromptFile.load(good, GENERATION_SLOTS)
    [message] = prompt.messages("data:image/png;base64,AAAA", num_queries=3)
    assert message["role"] == "user"
    assert message["content"] == [{"type": "text", "text": "Before"},
                                  {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                                  {"type": "text", "text": 'Write 3 queries as {"queries": []}.'}]
    assert prompt.ident.startswith("p.txt@") and len(prompt.ident) == len("p.txt@") + 12


@pytest.mark.parametrize("text, missing", [("Write {num_queries} queries.", "{image}"),
                                           ("{image} Write queries.", "{num_queries}"),
                                           ("# {image}\nWrite {num_queries} queries.", "{image}")])
def test_prompt_file_without_slots_is_refused(tmp_path, text, missing):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"bad.txt: missing slot\(s\) {missing}"):
        PromptFile.load(path, GENERATION_SLOTS)


def test_prompt_file_with_two_images_is_refused(tmp_path):
    path = tmp_path / "two.txt"
    path.write_text("{image}{image} {num_queries}")
    with pytest.raises(ValueError, match="exactly once"):
        PromptFile.load(path, GENERATION_SLOTS)


def test_packaged_prompts_load():
    from query_generation.prompt import DEFAULT_JUDGE_PROMPT, DEFAULT_QUERIES_PROMPT

    assert "{num_queries}" in PromptFile.load(DEFAULT_QUERIES_PROMPT, GENERATION_SLOTS).text
    judge = PromptFile.load(DEFAULT_JUDGE_PROMPT, JUDGE_SLOTS)
    assert judge.messages(query="q?") == [{"role": "user", "content": judge.fill(query="q?")}]
