"""OpenAI-compatible backend: any ``/chat/completions`` endpoint (``vllm serve``, TGI, SGLang, hosted APIs).

* Images go as ``image_url`` parts holding base64 data URLs; ``seed``, ``n``, ``temperature`` and
  ``max_tokens`` are sent with every request.
* Structured output: ``response_format`` with the JSON schema is sent until the server rejects it once (HTTP 400
  naming ``response_format``); from then on requests go without it and the parser copes with free text.
* Up to ``concurrency`` requests in flight, on daemon threads: a stopped run (SIGTERM, Ctrl-C) never waits for
  them, and :meth:`OpenAIGenerator.close` wakes every wait between attempts.
* Retries with exponential backoff (``Retry-After`` honoured) on 429, 5xx, timeouts and transport errors; one wait
  never exceeds :data:`MAX_WAIT` seconds, whatever the server asks for. When the retries run out, a server that
  cannot be reached or stays overloaded stops the run with an error naming the URL (pages already written are
  kept); a reply that stays broken (cut off, not HTTP, reset, too slow) fails that page only. Other 4xx answers (a
  page the server refuses) are failures of that page only, except 401/403/404, which stop the run.

Everything the server controls is bounded: a reply body is read in chunks up to :data:`MAX_REPLY_BYTES` (past it
the page fails) within ``timeout`` seconds in all, a completion nested deeper than the JSON decoder allows fails
its page, message ``content`` must be text (null, a string, or a list of parts whose text parts are joined), and a
failure quotes at most :data:`QUOTE_CHARS` characters of what the server sent. The API key, and anything shaped
``Bearer <token>``, is redacted from every error and text this backend produces, also when the server echoes it.

Plain ``urllib``: no client library is needed.
"""
from __future__ import annotations

import http.client
import json
import math
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from data_prep.errors import InputError, UserError

from .base import QueryGenerator, Decoding, Reply, Request

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
FATAL_STATUS = frozenset({401, 403, 404})
MAX_WAIT = 60.0  # seconds: the longest wait between two attempts (Retry-After and backoff are capped to it)
MAX_REPLY_BYTES = 8 * 2**20  # a completion body larger than this fails its page (answers are a few KB)
MAX_ERROR_BYTES = 64 * 2**10  # of an error body, only this much is read (it is only quoted)
READ_CHUNK = 64 * 2**10
QUOTE_CHARS = 300  # characters of a server's reply quoted in an error
REDACTED = "[redacted]"
_BEARER = re.compile(r"\bBearer\s+[^\s\"'\\,;]+", re.IGNORECASE)
T = TypeVar("T")
R = TypeVar("R")


class ServerError(UserError, ConnectionError):
    """The server cannot serve the run (unreachable, overloaded past the retries, or refusing the credentials)."""


class PageFailure(Exception):
    """The server gave no usable answer for one request; the run goes on (the page is recorded as failed)."""


class Transient(Exception):
    """An attempt that may succeed when repeated: ``after`` is the wait the server asked for, ``page_only`` says
    whether the request failed after reaching the server (a broken reply) rather than not reaching it."""

    def __init__(self, reason: str, after: float = 0.0, page_only: bool = False) -> None:
        super().__init__(reason)
        self.after, self.page_only = after, page_only


class OpenAIGenerator(QueryGenerator):
    name = "openai"

    def __init__(self, model: str, base_url: str, api_key_env: str | None = None, concurrency: int = 8,
                 max_retries: int = 5, timeout: float = 120.0, backoff: float = 1.0) -> None:
        super().__init__(model)
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.headers = {"Content-Type": "application/json"}
        self.secrets: tuple[str, ...] = ()
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise InputError(f"--api_key_env {api_key_env}: that environment variable is not set; export it "
                                 "with the API key")
            self.headers["Authorization"] = f"Bearer {key}"
            self.secrets = (key,)
        if concurrency < 1:
            raise InputError(f"--concurrency must be >= 1, got {concurrency}")
        self.concurrency, self.max_retries, self.timeout, self.backoff = concurrency, max_retries, timeout, backoff
        self.use_schema = True
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def generate(self, requests: Sequence[Request], decoding: Decoding) -> list[Reply]:
        return map_in_threads(lambda r: self.complete(r, decoding), requests, self.concurrency)

    def close(self) -> None:
        """Stop: waits between attempts end at once, and no attempt starts any more."""
        self._stopped.set()

    def redact(self, text: str) -> str:
        """``text`` without the API key nor any ``Bearer <token>``."""
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return _BEARER.sub(f"Bearer {REDACTED}", text)

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
        """One request's reply: its answers, or the reason it failed (redacted, bounded)."""
        try:
            return Reply([self.redact(text) for text in self.answers(request, decoding)])
        except PageFailure as failure:
            return Reply(error=self.redact(f"{self.url}: {request.key}: {failure}"))

    def answers(self, request: Request, decoding: Decoding) -> list[str]:
        """One chat completion with retries; a 400 caused by ``response_format`` retries once without it."""
        body = self.body(request, decoding)
        status, payload = self.post(body)
        if status == 400 and "response_format" in body and "response_format" in payload:
            with self._lock:
                self.use_schema = False
            status, payload = self.post(self.body(request, decoding))
        if status != 200:
            raise PageFailure(f"answered HTTP {status}: {payload[:QUOTE_CHARS]}")
        return completion_texts(payload)

    def post(self, body: dict[str, Any]) -> tuple[int, str]:
        """``(status, body text)`` of a POST. Transient failures are retried; past the retries, a reply that stayed
        broken raises ``PageFailure`` and a server that cannot be reached or stays overloaded ``ServerError``."""
        data = json.dumps(body).encode()
        for attempt in range(self.max_retries + 1):
            if self._stopped.is_set():
                raise ServerError(f"{self.url}: the run was stopped")
            try:
                return self.attempt(data)
            except Transient as err:
                last = err
            if attempt < self.max_retries:
                self._stopped.wait(min(max(self.backoff * 2**attempt, last.after), MAX_WAIT))
        attempts = f"after {self.max_retries + 1} attempts (last: {last})"
        if last.page_only:
            raise PageFailure(f"no usable reply {attempts}")
        raise ServerError(self.redact(f"cannot get an answer from {self.url} {attempts}; is the server running? "
                                      "Re-run the same command to resume."))

    def attempt(self, data: bytes) -> tuple[int, str]:
        """One POST: ``(status, text)`` of a reply to hand on; ``Transient`` for one worth repeating."""
        request = urllib.request.Request(self.url, data=data, headers=self.headers, method="POST")
        deadline = time.monotonic() + self.timeout
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, read_text(response, MAX_REPLY_BYTES, deadline)
        except urllib.error.HTTPError as err:
            return self.refusal(err, read_text_or_reason(err, deadline))
        except urllib.error.URLError as err:  # the request never reached the server
            raise Transient(f"URLError: {err.reason}") from None
        except (OSError, http.client.HTTPException) as err:  # cut off, reset, not HTTP, too slow
            raise Transient(f"{type(err).__name__}: {' '.join(str(err).split())}"[:QUOTE_CHARS], page_only=True) \
                from None

    def refusal(self, err: urllib.error.HTTPError, text: str) -> tuple[int, str]:
        """An HTTP error status: stop the run (401/403/404), retry (429, 5xx, ...), or hand it on."""
        if err.code in FATAL_STATUS:
            raise ServerError(self.redact(f"{self.url} answered HTTP {err.code}: {text[:QUOTE_CHARS]} (check "
                                          "--base_url, --model and --api_key_env)")) from None
        if err.code in RETRY_STATUS:
            raise Transient(f"HTTP {err.code}: {text[:200]}", retry_after(err.headers.get("Retry-After")))
        return err.code, text


def read_text(response: Any, limit: int, deadline: float) -> str:
    """The body of ``response``, read one socket read at a time; ``PageFailure`` past ``limit`` bytes,
    ``TimeoutError`` past ``deadline`` (``time.monotonic``) however slowly the server sends, ``IncompleteRead``
    when the connection closes before the announced length (``read1`` does not raise it)."""
    chunks, size = [], 0
    while chunk := response.read1(READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise PageFailure(f"the reply is larger than {limit} bytes")
        if time.monotonic() > deadline:
            raise TimeoutError("the reply took longer than the request timeout")
        chunks.append(chunk)
    if getattr(response, "length", None):
        raise http.client.IncompleteRead(b"".join(chunks), response.length)
    return b"".join(chunks).decode("utf-8", "replace")


def read_text_or_reason(err: urllib.error.HTTPError, deadline: float) -> str:
    """The start of an error status's body (at most :data:`MAX_ERROR_BYTES`), or why it cannot be read."""
    try:
        return read_text(err, MAX_ERROR_BYTES, deadline)
    except (PageFailure, OSError, http.client.HTTPException) as failure:
        return f"(body not read: {failure})"


def completion_texts(payload: str) -> list[str]:
    """The answers of a chat-completion body; ``PageFailure`` for anything else."""
    try:
        return [message_text(choice["message"]["content"]) for choice in json.loads(payload)["choices"]]
    except RecursionError:
        raise PageFailure("malformed completion: JSON nested deeper than the decoder allows") from None
    except (ValueError, KeyError, TypeError) as err:
        raise PageFailure(f"malformed completion ({err}): {payload[:QUOTE_CHARS]}") from None


def message_text(content: Any) -> str:
    """A message's ``content`` as text: null is no text, a list of parts is the join of its text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))
    raise TypeError(f"message content is {type(content).__name__}, not text")


def retry_after(value: str | None) -> float:
    """Seconds of a ``Retry-After`` header, within ``[0, MAX_WAIT]`` (an HTTP date or garbage counts as 0)."""
    try:
        seconds = float(value) if value else 0.0
    except ValueError:
        return 0.0
    return 0.0 if math.isnan(seconds) else min(max(seconds, 0.0), MAX_WAIT)


def map_in_threads(fn: Callable[[T], R], items: Sequence[T], concurrency: int) -> list[R]:
    """``[fn(item) for item in items]`` on up to ``concurrency`` daemon threads; the first exception stops the
    items not yet started and is raised here.

    Not a ``ThreadPoolExecutor``: the interpreter joins its threads at exit, so one stuck on a server would keep a
    stopped run alive. Joining here can be interrupted by a signal (SIGTERM raises in ``generate``).
    """
    results: list[Any] = [None] * len(items)
    errors: list[BaseException] = []
    pending = iter(range(len(items)))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                index = None if errors else next(pending, None)
            if index is None:
                return
            try:
                results[index] = fn(items[index])
            except BaseException as err:  # handed to the caller's thread
                with lock:
                    errors.append(err)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(min(concurrency, len(items)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results
