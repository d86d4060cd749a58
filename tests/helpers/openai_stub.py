"""A local stand-in for an OpenAI-compatible chat-completions server, on 127.0.0.1 (tests and bench only).

It records every request body, answers with ``answer(body)`` after ``delay`` seconds, can fail the first
``fail_first`` requests with HTTP 503, and can reject ``response_format`` with HTTP 400 like servers that do
not support structured output.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_ANSWER = '{"queries": [{"query": "wind farms in Denmark", "kind": "topical"}]}'


class StubServer:
    def __init__(self, answer: Callable[[dict], str] | None = None, delay: float = 0.0, fail_first: int = 0,
                 reject_schema: bool = False) -> None:
        self.answer = answer or (lambda body: DEFAULT_ANSWER)
        self.delay, self.fail_first, self.reject_schema = delay, fail_first, reject_schema
        self.bodies: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def _status_for(self, body: dict) -> int:
        with self._lock:
            self.bodies.append(body)
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
                status = stub._status_for(body)
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
