"""Backends without their real engines: vLLM through a fake ``vllm`` package that checks the calls, and the
OpenAI backend against a local stub server (images sent, retries, structured-output fallback, unreachable)."""
from __future__ import annotations

import base64
import json
import socket
import sys
import types
from pathlib import Path

import pytest

from query_generation.generators import Decoding, Request
from query_generation.generators.openai_server import OpenAIGenerator, ServerError
from query_generation.generate import build_parser, generate, main
from query_generation.parse import QUERIES_SCHEMA
from tests.helpers.query_data import make_store
from tests.helpers.openai_stub import StubServer

PAGES = ["d/1", "d/2", "e/1"]


class FakeLLM:
    """Records the engine arguments and every chat call; answers with one JSON query per page."""

    instances: list["FakeLLM"] = []

    def __init__(self, **kwargs):
        self.kwargs, self.calls = kwargs, []
        FakeLLM.instances.append(self)

    def chat(self, messages, sampling_params=None, use_tqdm=True):
        self.calls.append((messages, sampling_params))
        outputs = []
        for conversation, params in zip(messages, sampling_params):
            url = conversation[0]["content"][0]["image_url"]["url"]
            answer = json.dumps({"queries": [{"query": f"page of {len(url)} chars", "kind": "specific"}]})
            outputs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(text=answer)] * params.n))
        return outputs


class FakeSamplingParams:
    def __init__(self, n=1, temperature=1.0, seed=None, max_tokens=16, structured_outputs=None):
        self.n, self.temperature, self.seed, self.max_tokens = n, temperature, seed, max_tokens
        self.structured_outputs = structured_outputs


class FakeStructuredOutputsParams:
    def __init__(self, json=None):
        self.json = json


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = FakeLLM, FakeSamplingParams
    sampling = types.ModuleType("vllm.sampling_params")
    sampling.StructuredOutputsParams = FakeStructuredOutputsParams
    vllm.sampling_params = sampling
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling)
    FakeLLM.instances = []
    return vllm


def args(store: Path, out: Path, backend: str, *extra: str):
    return build_parser().parse_args(["--store", str(store), "--out", str(out), "--backend", backend,
                                      "--model", "org/vlm-7b", "--queries_per_page", "2", "--seed", "5",
                                      "--max_new_tokens", "200", *extra])


def test_vllm_contract(fake_vllm, tmp_path):
    store = make_store(tmp_path / "store", PAGES)
    counts = generate(args(store, tmp_path / "q.jsonl", "vllm", "--tensor_parallel_size", "2", "--max_model_len",
                           "8192", "--temperature", "0.7", "--samples_per_page", "2", "--batch_size", "2"))
    assert counts == {"pages": 3, "with_queries": 3, "failed": 0, "queries": 6}
    [llm] = FakeLLM.instances
    assert llm.kwargs["model"] == "org/vlm-7b" and llm.kwargs["tensor_parallel_size"] == 2
    assert llm.kwargs["max_model_len"] == 8192 and llm.kwargs["limit_mm_per_prompt"] == {"image": 1}
    assert [len(messages) for messages, _ in llm.calls] == [2, 1]  # batches of 2 pages
    messages, params = llm.calls[0]
    content = messages[0][0]["content"]
    assert messages[0][0]["role"] == "user" and content[0]["type"] == "image_url"
    header, data = content[0]["image_url"]["url"].split(",", 1)
    assert header == "data:image/png;base64" and base64.b64decode(data).startswith(b"\x89PNG")
    assert "Write 2 search queries" in content[1]["text"]
    assert all(p.n == 2 and p.temperature == 0.7 and p.max_tokens == 200 for p in params)
    assert params[0].seed != params[1].seed  # one seed per page
    assert params[0].structured_outputs.json == QUERIES_SCHEMA


def test_vllm_shards_are_disjoint_and_seeds_do_not_depend_on_them(fake_vllm, tmp_path):
    store = make_store(tmp_path / "store", PAGES)
    generate(args(store, tmp_path / "all.jsonl", "vllm", "--batch_size", "1"))
    seeds_all = [p.seed for _, params in FakeLLM.instances[0].calls for p in params]
    seen = []
    for index in range(2):
        generate(args(store, tmp_path / f"s{index}.jsonl", "vllm", "--batch_size", "1", "--num_shards", "2",
                      "--shard_index", str(index)))
        seen.append([p.seed for _, params in FakeLLM.instances[-1].calls for p in params])
    assert seen[0] + seen[1] == seeds_all and len(seen[0]) == 1 and len(seen[1]) == 2
    merged = (tmp_path / "s0.jsonl").read_bytes() + (tmp_path / "s1.jsonl").read_bytes()
    assert merged == (tmp_path / "all.jsonl").read_bytes()


def test_vllm_without_structured_output_support(fake_vllm, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", types.ModuleType("vllm.sampling_params"))
    store = make_store(tmp_path / "store", PAGES[:1])
    generate(args(store, tmp_path / "q.jsonl", "vllm"))
    [(_, [params])] = FakeLLM.instances[0].calls
    assert params.structured_outputs is None


def request(key: str = "d/1") -> Request:
    content = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}, {"type": "text", "text": "q?"}]
    return Request(key, [{"role": "user", "content": content}], None, 42)


def test_openai_sends_images_schema_and_seed(tmp_path):
    store = make_store(tmp_path / "store", PAGES)
    with StubServer() as stub:
        counts = generate(args(store, tmp_path / "q.jsonl", "openai", "--base_url", stub.base_url))
    assert counts == {"pages": 3, "with_queries": 3, "failed": 0, "queries": 3}
    assert len(stub.bodies) == 3
    body = stub.bodies[0]
    assert body["model"] == "org/vlm-7b" and body["max_tokens"] == 200 and body["temperature"] == 0.0
    assert body["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert body["response_format"]["json_schema"]["schema"] == QUERIES_SCHEMA
    assert len({b["seed"] for b in stub.bodies}) == 3


def test_openai_retries_transient_errors():
    with StubServer(fail_first=2) as stub:
        backend = OpenAIGenerator("m", stub.base_url, max_retries=3, backoff=0.01)
        [reply] = backend.generate([request()], Decoding(16))
    assert stub.statuses == [503, 503, 200] and reply.error is None and "wind farms" in reply.texts[0]


def test_openai_gives_up_after_retries_naming_the_url():
    with StubServer(fail_first=10) as stub:
        backend = OpenAIGenerator("m", stub.base_url, max_retries=2, backoff=0.01)
        with pytest.raises(ServerError, match=rf"{stub.base_url}/chat/completions after 3 attempts.*HTTP 503"):
            backend.generate([request()], Decoding(16))


def test_openai_drops_response_format_when_refused():
    with StubServer(reject_schema=True) as stub:
        backend = OpenAIGenerator("m", stub.base_url, backoff=0.01)
        replies = backend.generate([request("a"), request("b")], Decoding(16, json_schema=QUERIES_SCHEMA))
    assert all(r.error is None for r in replies)
    assert stub.statuses.count(400) >= 1 and "response_format" not in stub.bodies[-1]


def test_unreachable_server_stops_the_run_keeping_the_output(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VLMRET_DEBUG", raising=False)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = make_store(tmp_path / "store", PAGES)
    out = tmp_path / "q.jsonl"
    out.write_text('{"page_id": "d/1", "doc_id": "d", "query": "kept"}\n{"page_id": "d/2", "doc_id": "d", "query": "x"}\n')
    url = f"http://127.0.0.1:{port}/v1"
    argv = ["--store", str(store), "--out", str(out), "--backend", "openai", "--model", "m", "--base_url", url,
            "--max_retries", "1"]
    with pytest.raises(ServerError, match=rf"cannot get an answer from {url}/chat/completions"):
        generate(build_parser().parse_args(argv))
    assert out.read_text() == '{"page_id": "d/1", "doc_id": "d", "query": "kept"}\n'  # d/2 was the last page
    with pytest.raises(SystemExit) as exit_info:  # through the CLI: one line, exit status 2
        main(argv)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2 and errors == [
        f"error: cannot get an answer from {url}/chat/completions after 2 attempts (last: URLError: [Errno 111] "
        "Connection refused); is the server running? Re-run the same command to resume."]
