"""OpenAI-compatible backend: any ``/chat/completions`` endpoint (``vllm serve``, TGI, SGLang, hosted APIs).

* Images go as ``image_url`` parts holding base64 data URLs; ``seed``, ``n``, ``temperature`` and
  ``max_tokens`` are sent with every request.
* Structured output: ``response_format`` with the JSON schema is sent until the server rejects it once (HTTP 400
  naming ``response_format``); from then on requests go without it and the parser copes with free text.
* Up to ``concurrency`` requests in flight (threads; the work is waiting on the network).
* Retries with exponential backoff (``Retry-After`` honoured) on 429, 5xx, timeouts and connection errors. When
  they run out, the run stops with an error naming the URL; pages already written are kept. Other 4xx answers
  (a page the server refuses) are failures of that page only, except 401/403/404, which stop the run.

Plain ``urllib``: no client library is needed.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from data_prep.errors import InputError, UserError

from .base import QueryGenerator, Decoding, Reply, Request

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
FATAL_STATUS = frozenset({401, 403, 404})


class ServerError(UserError, ConnectionError):
    """The server cannot serve the run (unreachable, overloaded past the retries, or refusing the credentials)."""


class OpenAIGenerator(QueryGenerator):
    name = "openai"

    def __init__(self, model: str, base_url: str, api_key_env: str | None = None, concurrency: int = 8,
                 max_retries: int = 5, timeout: float = 120.0, backoff: float = 1.0) -> None:
        super().__init__(model)
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.headers = {"Content-Type": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise InputError(f"--api_key_env {api_key_env}: that environment variable is not set; export it "
                                 "with the API key")
            self.headers["Authorization"] = f"Bearer {key}"
        if concurrency < 1:
            raise InputError(f"--concurrency must be >= 1, got {concurrency}")
        self.concurrency, self.max_retries, self.timeout, self.backoff = concurrency, max_retries, timeout, backoff
        self.use_schema = True
        self._lock = threading.Lock()

    def generate(self, requests: Sequence[Request], decoding: Decoding) -> list[Reply]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda r: self.complete(r, decoding), requests))

    def body(self, request: Request, decoding: Decoding) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": request.messages, "seed": request.seed,
                                "temperature": decoding.temperature, "max_tokens": decoding.max_new_tokens}
        if decoding.samples != 1:
            body["n"] = decoding.samples
        if decoding.json_schema is not None and self.use_schema:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "answer", "schema": decoding.json_schema}}
        return body

    def complete(self, request: Request, decoding: Decoding) -> Reply:
        """One chat completion with retries; a 400 caused by ``response_format`` retries once without it."""
        body = self.body(request, decoding)
        status, payload = self.post(body)
        if status == 400 and "response_format" in body and "response_format" in payload:
            with self._lock:
                self.use_schema = False
            status, payload = self.post(self.body(request, decoding))
        if status != 200:
            return Reply(error=f"{self.url} answered HTTP {status} for {request.key}: {payload[:300]}")
        try:
            choices = json.loads(payload)["choices"]
            return Reply([choice["message"]["content"] or "" for choice in choices])
        except (ValueError, KeyError, TypeError) as err:
            return Reply(error=f"{self.url}: malformed completion for {request.key} ({err}): {payload[:300]}")

    def post(self, body: dict[str, Any]) -> tuple[int, str]:
        """``(status, body text)`` of a POST; retries transient failures, raises ``ServerError`` past them."""
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(self.max_retries + 1):
            wait = self.backoff * 2**attempt
            try:
                request = urllib.request.Request(self.url, data=data, headers=self.headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.status, response.read().decode("utf-8", "replace")
            except urllib.error.HTTPError as err:
                text = err.read().decode("utf-8", "replace")
                if err.code in FATAL_STATUS:
                    raise ServerError(f"{self.url} answered HTTP {err.code}: {text[:300]} "
                                      "(check --base_url, --model and --api_key_env)") from None
                if err.code not in RETRY_STATUS:
                    return err.code, text
                last = f"HTTP {err.code}: {text[:200]}"
                wait = max(wait, _retry_after(err.headers.get("Retry-After")))
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as err:
                last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            if attempt < self.max_retries:
                time.sleep(wait)
        raise ServerError(f"cannot get an answer from {self.url} after {self.max_retries + 1} attempts "
                          f"(last: {last}); is the server running? Re-run the same command to resume.")


def _retry_after(value: str | None) -> float:
    try:
        return float(value) if value else 0.0
    except ValueError:
        return 0.0
