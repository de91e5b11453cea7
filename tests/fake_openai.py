"""A fake OpenAI-compatible chat server for tests (a test double: it never ships in the package).

``FakeOpenAI`` serves ``POST /v1/chat/completions`` on 127.0.0.1 (a free port) from a background
thread. It answers with ``answer(request_json) -> text`` after ``latency_s``, reports ``usage``
(prompt tokens ~ characters / 4, completion tokens ~ answer characters / 4), and can inject failures:

- ``fail_next(kind, n, retry_after=None)`` queues failures for the next ``n`` requests;
- ``fail_when = lambda body, n: kind | None`` fails chosen requests (``n`` counts from 1).

Kinds: ``"429"`` (with ``Retry-After`` seconds, or ``retry-after-ms`` when ``retry_after_ms`` is
given), ``"500"``, ``"503"``, ``"400"``, ``"401"`` (its message echoes the key it saw, as careless
servers do), ``"403"``, ``"404"``, ``"malformed"`` (a non-JSON body with status 200), ``"no_choices"``,
``"null_content"``, ``"html_502"`` / ``"html_200"`` (an HTML
page from a proxy, as status 502 or 200), ``"hang"`` (sleeps ``hang_s`` before answering, to provoke client
timeouts).

It counts requests (``total``, ``per_prompt`` keyed by the last message's content), the most requests
it held at once (``max_in_flight``), their arrival times, and the ``Authorization`` headers it saw.

``batches`` (:class:`fake_batches.FakeBatches`) serves the Files and Batch API on the same server; its
lines are answered by the same ``answer`` and counted separately (``batches.lines_processed``).
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fake_batches import FakeBatches

HTML_PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1>"
    b"</center><hr><center>nginx/1.25.3 upstream timed out</center></body></html>"
)


def estimate_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def default_answer(body: dict[str, Any]) -> str:
    return "echo: " + body["messages"][-1]["content"]


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 drops bursts of new connections (1 s SYN retries)
    daemon_threads = True


class FakeOpenAI:
    def __init__(self, answer: Callable[[dict[str, Any]], str] = default_answer, latency_s: float = 0.0):
        self.answer = answer
        self.latency_s = latency_s
        self.hang_s = 2.0
        self.fail_when: Callable[[dict[str, Any], int], str | None] | None = None
        self._script: collections.deque[tuple[str, float | None, float | None]] = collections.deque()
        self._lock = threading.Lock()
        self.total = 0
        self.per_prompt: collections.Counter[str] = collections.Counter()
        self.arrivals: list[float] = []
        self.auth_headers: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.batches = FakeBatches(self)
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # -- control -----------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(
        self, kind: str, n: int = 1, retry_after: float | None = None, retry_after_ms: float | None = None
    ) -> None:
        with self._lock:
            self._script.extend([(kind, retry_after, retry_after_ms)] * n)

    def reset_counts(self) -> None:
        with self._lock:
            self.total = 0
            self.per_prompt.clear()
            self.arrivals.clear()
            self.max_in_flight = 0

    # -- serving -----------------------------------------------------------------------------------
    def completion(self, body: dict[str, Any], kind: str | None) -> tuple[int, dict[str, Any]]:
        """A chat completion for ``body`` (``kind``: None, "no_choices" or "null_content")."""
        text = self.answer(body)
        prompt_text = "".join(m["content"] for m in body["messages"])
        completion_tokens = min(estimate_tokens(text), body.get("max_tokens") or 10**9)
        usage = {
            "prompt_tokens": estimate_tokens(prompt_text) + 3 * len(body["messages"]),
            "completion_tokens": completion_tokens,
            "total_tokens": 0,
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        message = {"role": "assistant", "content": None if kind == "null_content" else text}
        choices = (
            []
            if kind == "no_choices"
            else [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}]
        )
        return 200, {
            "id": f"chatcmpl-{self.total}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": choices,
            "usage": usage,
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if not fake.batches.handles(self.path):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                with fake._lock:
                    fake.auth_headers.append(self.headers.get("Authorization", ""))
                self._reply(*fake.batches.get(self.path))

            def _reply(self, status: int, payload: Any) -> None:
                if isinstance(payload, bytes):
                    return self._send_raw(status, payload, "application/octet-stream")
                self._send(status, payload)

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if fake.batches.handles(self.path):
                    with fake._lock:
                        fake.auth_headers.append(self.headers.get("Authorization", ""))
                    return self._reply(*fake.batches.post(self.path, self.headers, raw))
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                body = json.loads(raw)
                prompt = body["messages"][-1]["content"]
                with fake._lock:
                    fake.total += 1
                    n = fake.total
                    fake.per_prompt[prompt] += 1
                    fake.arrivals.append(time.monotonic())
                    fake.auth_headers.append(self.headers.get("Authorization", ""))
                    fake.bodies.append(body)
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    scripted = fake._script.popleft() if fake._script else None
                try:
                    if fake.latency_s:
                        time.sleep(fake.latency_s)
                    kind, retry_after, retry_after_ms = scripted or (None, None, None)
                    if kind is None and fake.fail_when is not None:
                        kind = fake.fail_when(body, n)
                    self._serve(body, kind, retry_after, retry_after_ms)
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

            def _serve(
                self,
                body: dict[str, Any],
                kind: str | None,
                retry_after: float | None,
                retry_after_ms: float | None,
            ) -> None:
                if kind == "429":
                    headers = {}
                    if retry_after_ms is not None:
                        headers["retry-after-ms"] = str(retry_after_ms)
                    elif retry_after is not None:
                        headers["Retry-After"] = str(retry_after)
                    return self._send(
                        429, {"error": {"message": "Rate limit reached", "type": "requests"}}, headers
                    )
                if kind in ("500", "503", "400", "403", "404"):
                    return self._send(int(kind), {"error": {"message": f"injected {kind}"}})
                if kind == "401":
                    key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    return self._send(
                        401,
                        {
                            "error": {
                                "message": f"Incorrect API key provided: {key}.",
                                "code": "invalid_api_key",
                            }
                        },
                    )
                if kind == "malformed":
                    return self._send_raw(200, b'{"id": "chatcmpl-x", "choices": [', "application/json")
                if kind in ("html_502", "html_200"):
                    return self._send_raw(502 if kind == "html_502" else 200, HTML_PAGE, "text/html")
                if kind == "hang":
                    time.sleep(fake.hang_s)
                self._send(*fake.completion(body, kind))

            def _send(
                self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                self._send_raw(status, json.dumps(payload).encode(), "application/json", headers)

            def _send_raw(
                self, status: int, data: bytes, ctype: str, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        return Handler
