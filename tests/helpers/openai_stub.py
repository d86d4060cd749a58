"""A local stand-in for an OpenAI-compatible chat-completions server, on 127.0.0.1 (tests and bench only).

It records every request body, answers with ``answer(body)`` after ``delay`` seconds, can fail the first
``fail_first`` requests with HTTP 503, and can reject ``response_format`` with HTTP 400 like servers that do
not support structured output.

Misbehaviour: the first requests are answered by the actions of ``script``, in order, one per request (then the
stub behaves). An action writes whatever it likes on the connection, which is closed after it: :func:`raw`
(bytes as given: a cut-off body, a reply that is no HTTP, a huge body), :func:`reply` (a well-formed reply with any
status, headers and body), :func:`completion` (a 200 whose message ``content`` is any JSON value),
:func:`echo_auth` (an error status whose body quotes the request's Authorization header), :func:`reset` (a TCP
reset) and :func:`hang` (silence for a bounded time).
"""
from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_ANSWER = '{"queries": [{"query": "wind farms in Denmark", "kind": "topical"}]}'
Action = Callable[[BaseHTTPRequestHandler], None]


def raw(data: bytes) -> Action:
    """Write ``data`` as it is (status line and headers included, or not) and close."""
    return lambda handler: handler.wfile.write(data)


def http_bytes(status: int, body: bytes, headers: dict[str, str] | None = None,
               content_length: int | None = None) -> bytes:
    """A whole HTTP/1.1 reply; ``content_length`` may announce more than ``body`` holds (a cut-off reply)."""
    lines = [f"HTTP/1.1 {status} X", "Content-Type: application/json",
             f"Content-Length: {len(body) if content_length is None else content_length}", "Connection: close",
             *(f"{name}: {value}" for name, value in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def reply(status: int, body: bytes = b"{}", headers: dict[str, str] | None = None) -> Action:
    return raw(http_bytes(status, body, headers))


def completion(content: Any) -> Action:
    """A 200 whose one choice's message ``content`` is ``content`` (any JSON value)."""
    return reply(200, json.dumps({"choices": [{"index": 0, "message": {"role": "assistant",
                                                                       "content": content}}]}).encode())


def echo_auth(status: int) -> Action:
    """An error ``status`` whose body quotes the Authorization header it received, as some servers do."""
    def act(handler: BaseHTTPRequestHandler) -> None:
        message = f"invalid credentials: {handler.headers.get('Authorization')}"
        reply(status, json.dumps({"error": {"message": message}}).encode())(handler)

    return act


def reset(handler: BaseHTTPRequestHandler) -> None:
    """Close the connection with a TCP reset (SO_LINGER 0), before any reply."""
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    socket.socket(fileno=handler.connection.detach()).close()  # now, not after the handler's FIN


def hang(seconds: float) -> Action:
    """Say nothing for ``seconds`` (the client's timeout should fire first), then close."""
    return lambda handler: time.sleep(seconds)


class StubServer:
    def __init__(self, answer: Callable[[dict], str] | None = None, delay: float = 0.0, fail_first: int = 0,
                 reject_schema: bool = False, script: Sequence[Action] = ()) -> None:
        self.answer = answer or (lambda body: DEFAULT_ANSWER)
        self.delay, self.fail_first, self.reject_schema = delay, fail_first, reject_schema
        self.script = list(script)
        self.bodies: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # a client that hangs up on a misbehaviour
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def _decide(self, body: dict) -> Action | int:
        """Records the request; the script's next action, or else the status to answer with."""
        with self._lock:
            self.bodies.append(body)
            if self.script:
                return self.script.pop(0)
            if len(self.bodies) <= self.fail_first:
                status = 503
            elif self.reject_schema and "response_format" in body:
                status = 400
            else:
                status = 200
            self.statuses.append(status)
            return status

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                decision = stub._decide(body)
                if not isinstance(decision, int):
                    self.close_connection = True
                    decision(self)
                    return
                status = decision
                time.sleep(stub.delay)
                if status == 200:
                    n = body.get("n", 1)
                    payload = {"choices": [{"index": i, "message": {"role": "assistant",
                                                                    "content": stub.answer(body)}}
                                           for i in range(n)]}
                elif status == 400:
                    payload = {"error": {"message": "response_format is not supported"}}
                else:
                    payload = {"error": {"message": "overloaded"}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def __enter__(self) -> StubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
