"""Backends without their real engines: vLLM through a fake ``vllm`` package that checks the calls, and the
OpenAI backend against a local stub server (images sent, retries, structured-output fallback, unreachable, and a
server that misbehaves in every way it can: waits, cut-off or endless replies, odd content, echoed secrets)."""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from query_generation.generators import Decoding, Reply, Request
from query_generation.generators import openai_server
from query_generation.generators.openai_server import MAX_REPLY_BYTES, MAX_WAIT, OpenAIGenerator, ServerError
from query_generation.generate import MAX_RAW_CHARS, MAX_REASON_CHARS, build_parser, generate, main
from query_generation.parse import QUERIES_SCHEMA
from tests.helpers.paths import REPO_ROOT
from tests.helpers.query_data import make_store
from tests.helpers.openai_stub import (DEFAULT_ANSWER, StubServer, completion, echo_auth, hang, http_bytes, raw,
                                       reply, reset)

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
    assert llm.kwargs["trust_remote_code"] is False  # stated, never left to a prompt
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


def test_vllm_runs_checkpoint_code_only_with_the_flag(fake_vllm, tmp_path):
    store = make_store(tmp_path / "store", PAGES[:1])
    generate(args(store, tmp_path / "q.jsonl", "vllm", "--trust_remote_code"))
    assert FakeLLM.instances[0].kwargs["trust_remote_code"] is True


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


# ---------------------------------------------------------------- a server that misbehaves

@pytest.mark.parametrize("value, seconds", [("100000", MAX_WAIT), ("inf", MAX_WAIT), ("1e400", MAX_WAIT),
                                            ("nan", 0.0), ("-3", 0.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
                                            ("2.5", 2.5)])
def test_retry_after_is_finite_and_capped(value, seconds):
    assert openai_server.retry_after(value) == seconds


@pytest.mark.parametrize("value", ["100000", "inf"])
def test_a_huge_retry_after_waits_at_most_the_cap(value, monkeypatch):
    monkeypatch.setattr(openai_server, "MAX_WAIT", 0.2)
    with StubServer(script=[reply(503, headers={"Retry-After": value})]) as stub:
        backend = OpenAIGenerator("m", stub.base_url, max_retries=1, backoff=0.01)
        start = time.monotonic()
        [answer] = backend.generate([request()], Decoding(16))
    assert time.monotonic() - start < 5 and answer.error is None and len(stub.bodies) == 2


BROKEN = {"IncompleteRead": raw(http_bytes(200, b'{"choices": [{"mess', content_length=4000)),  # cut off
          "BadStatusLine": raw(b"SSH-2.0-OpenSSH_9.6\r\n"),  # not HTTP
          "RemoteDisconnected": raw(b""),  # hung up
          "ConnectionResetError": reset,
          "TimeoutError": hang(3.0)}


@pytest.mark.parametrize("error", BROKEN)
def test_a_broken_reply_is_retried_then_fails_its_page_only(error):
    """Page a meets the misbehaviour on all 3 attempts and fails; page b, after it, is answered."""
    with StubServer(script=[BROKEN[error]] * 3) as stub:
        backend = OpenAIGenerator("m", stub.base_url, concurrency=1, max_retries=2, timeout=0.5, backoff=0.01)
        failed, answered = backend.generate([request("a"), request("b")], Decoding(16))
    assert len(stub.bodies) == 4 and failed.texts == [] and answered.error is None
    assert failed.error.startswith(f"{stub.base_url}/chat/completions: a: no usable reply after 3 attempts "
                                   f"(last: {error}: ")


def test_a_broken_reply_then_a_good_one_is_an_answer():
    with StubServer(script=[BROKEN["IncompleteRead"], BROKEN["BadStatusLine"], BROKEN["ConnectionResetError"]]) as stub:
        backend = OpenAIGenerator("m", stub.base_url, max_retries=3, backoff=0.01)
        [answer] = backend.generate([request()], Decoding(16))
    assert answer.error is None and "wind farms" in answer.texts[0]


def test_a_reply_over_the_size_limit_fails_its_page_unread():
    body = b'{"choices": [{"message": {"content": "' + b"x" * MAX_REPLY_BYTES + b'"}}]}'
    with StubServer(script=[raw(http_bytes(200, body))]) as stub:
        [answer] = OpenAIGenerator("m", stub.base_url, backoff=0.01).generate([request()], Decoding(16))
    assert len(stub.bodies) == 1 and answer.error == (f"{stub.base_url}/chat/completions: d/1: the reply is larger "
                                                      f"than {MAX_REPLY_BYTES} bytes")


@pytest.mark.parametrize("content, text", [
    (None, ""), ("plain", "plain"),
    ([{"type": "text", "text": '{"queries": '}, {"type": "image_url", "image_url": {"url": "x"}}, 7,
      {"type": "text", "text": '["a b c"]}'}], '{"queries": ["a b c"]}')])
def test_message_content_of_any_shape_is_text(content, text):
    with StubServer(script=[completion(content)]) as stub:
        [answer] = OpenAIGenerator("m", stub.base_url).generate([request()], Decoding(16))
    assert answer == Reply([text])


@pytest.mark.parametrize("action, reason", [
    (completion(5), "malformed completion (message content is int, not text)"),
    (completion({"text": "x"}), "malformed completion (message content is dict, not text)"),
    (raw(http_bytes(200, b'{"choices": ' + b"[" * 100_000)), "JSON nested deeper than the decoder allows")])
def test_malformed_completions_fail_their_page(action, reason):
    with StubServer(script=[action]) as stub:
        [answer] = OpenAIGenerator("m", stub.base_url).generate([request()], Decoding(16))
    assert reason in answer.error and len(answer.error) < 1000


def test_hostile_answers_are_page_failures_with_bounded_records(tmp_path):
    """An answer nested 100000 deep and one of 1 MB: both pages fail, the run finishes, and the failures file
    holds their reasons and their raw answers clipped."""
    store = make_store(tmp_path / "store", PAGES[:2])
    with StubServer(script=[completion("[" * 100_000), completion("no json " * 125_000)]) as stub:
        counts = generate(args(store, tmp_path / "q.jsonl", "openai", "--base_url", stub.base_url,
                               "--concurrency", "1"))
    assert counts == {"pages": 2, "with_queries": 0, "failed": 2, "queries": 0}
    deep, long = [json.loads(line) for line in (tmp_path / "q.failures.jsonl").read_text().splitlines()]
    assert deep["reason"] == "no queries in the model's answer: the answer nests JSON deeper than the decoder allows"
    assert long["reason"].startswith("no queries in the model's answer: no JSON object")
    assert deep["raw"][0].endswith("... [80000 more characters]") and len(deep["raw"][0]) < MAX_RAW_CHARS + 40
    assert long["raw"][0].endswith("... [980000 more characters]") and len(long["raw"][0]) < MAX_RAW_CHARS + 40


def test_failure_reasons_are_clipped(tmp_path):
    class Wordy:
        def generate(self, requests, decoding):
            return [Reply(error="server says " + "x" * 10**6) for _ in requests]

        def close(self):
            pass

    store = make_store(tmp_path / "store", PAGES[:1])
    generate(args(store, tmp_path / "q.jsonl", "openai", "--base_url", "http://127.0.0.1:9/v1"), Wordy())
    [record] = [json.loads(line) for line in (tmp_path / "q.failures.jsonl").read_text().splitlines()]
    assert record["reason"].startswith("server says xxx") and len(record["reason"]) < MAX_REASON_CHARS + 100


def test_sigterm_stops_a_run_waiting_on_the_server(tmp_path):
    """The server asks for a 100000 s wait; SIGTERM ends the run within seconds, keeping what was written."""
    store = make_store(tmp_path / "store", PAGES)
    out = tmp_path / "q.jsonl"
    argv = [sys.executable, "-m", "query_generation.generate", "--store", str(store), "--out", str(out),
            "--backend", "openai", "--model", "m", "--batch_size", "1", "--concurrency", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    script = [completion(DEFAULT_ANSWER)] + [reply(503, headers={"Retry-After": "100000"})] * 10
    with StubServer(script=script) as stub:
        proc = subprocess.Popen(argv + ["--base_url", stub.base_url], cwd=REPO_ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while len(stub.bodies) < 2 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert len(stub.bodies) == 2, "the run never reached the waiting request"
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            start = time.monotonic()
            proc.wait(timeout=15)
            assert time.monotonic() - start < 10 and proc.returncode != 0
        finally:
            proc.kill()
            proc.wait()
    assert [json.loads(line)["page_id"] for line in out.read_text().splitlines()] == ["d/1"]


# ---------------------------------------------------------------- secrets

KEY = "sk-test-5f2a9c1e7b"


@pytest.mark.parametrize("status", [400, 401, 503])
def test_an_echoed_api_key_is_redacted(status, monkeypatch):
    monkeypatch.setenv("STUB_API_KEY", KEY)
    with StubServer(script=[echo_auth(status)] * 2) as stub:
        backend = OpenAIGenerator("m", stub.base_url, api_key_env="STUB_API_KEY", max_retries=1, backoff=0.01)
        try:
            [answer] = backend.generate([request()], Decoding(16))
            message = answer.error
        except ServerError as err:
            message = str(err)
    assert f"HTTP {status}" in message and "invalid credentials: Bearer [redacted]" in message
    assert KEY not in message


def test_an_echoed_api_key_never_reaches_answers(monkeypatch):
    monkeypatch.setenv("STUB_API_KEY", KEY)
    with StubServer(script=[completion(f"your key {KEY}, sent as Authorization: Bearer abc.def-1")]) as stub:
        [answer] = OpenAIGenerator("m", stub.base_url, api_key_env="STUB_API_KEY").generate([request()], Decoding(16))
    assert answer.texts == ["your key [redacted], sent as Authorization: Bearer [redacted]"]


def test_an_echoed_api_key_stays_out_of_the_error_line_and_the_failures_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("STUB_API_KEY", KEY)
    monkeypatch.delenv("VLMRET_DEBUG", raising=False)
    store = make_store(tmp_path / "store", PAGES[:1])
    with StubServer(script=[echo_auth(400)]) as stub:
        generate(args(store, tmp_path / "q.jsonl", "openai", "--base_url", stub.base_url, "--api_key_env",
                      "STUB_API_KEY"))
    failures = (tmp_path / "q.failures.jsonl").read_text()
    assert "HTTP 400" in failures and "Bearer [redacted]" in failures and KEY not in failures
    with StubServer(script=[echo_auth(401)]) as stub, pytest.raises(SystemExit) as exit_info:
        main(["--store", str(store), "--out", str(tmp_path / "q2.jsonl"), "--backend", "openai", "--model", "m",
              "--base_url", stub.base_url, "--api_key_env", "STUB_API_KEY"])
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2 and "HTTP 401" in line and "Bearer [redacted]" in line and KEY not in err
