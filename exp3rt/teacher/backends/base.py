"""The contract between annotation stages and teacher backends.

A stage builds :class:`ChatRequest` objects: the chat ``messages`` rendered from the stage's prompt
template (what an LLM sees) plus the structured ``payload`` the messages were rendered from (what a
non-LLM backend such as ``extractive`` needs: the review text, the preference sets, the rating...).
A backend answers each with a :class:`ChatResponse`. Backends never cache, retry or budget: the
:class:`~exp3rt.teacher.client.TeacherClient` around them does that, the same way for every backend.

Errors: a backend raises :class:`TransientError` for what a retry may fix (HTTP 429 with its
``Retry-After``, 5xx, timeouts, dropped connections) and :class:`PermanentError` for what it cannot
(401, 400 on a bad request, a model that does not exist).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class ChatRequest:
    stage: str  # extract | user_profile | item_profile | rationale | consistency
    messages: tuple[tuple[str, str], ...]  # ((role, content), ...) — hashable
    prompt_version: str
    temperature: float = 0.0
    max_tokens: int = 256
    top_p: float = 1.0
    seed: int | None = None
    attempt: int = 0  # repair attempts get their own cache entry
    payload: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def as_openai_messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def cache_key(self, backend: str, model: str) -> str:
        """Content address: backend, model, prompt version, messages and sampling parameters.
        For the ``extractive`` backend the payload is the input, so it is part of the key too."""
        body = {
            "backend": backend,
            "model": model,
            "stage": self.stage,
            "prompt_version": self.prompt_version,
            "messages": self.messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "seed": self.seed,
            "attempt": self.attempt,
        }
        if backend == "extractive":
            body["payload"] = self.payload
        raw = json.dumps(body, sort_keys=True, default=str, ensure_ascii=False)
        return hashlib.sha256(raw.encode()).hexdigest()


@dataclass
class ChatResponse:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    finish_reason: str | None = None
    cached: bool = False
    cost_usd: float = 0.0


class TeacherError(RuntimeError):
    """``body``: what the server sent back, when it was not a usable answer (e.g. a proxy's HTML error
    page), scrubbed of secrets and cut to :data:`BODY_CHARS` characters — kept in the failure record."""

    body: str | None = None


BODY_CHARS = 500


class TransientError(TeacherError):
    """Worth retrying; ``retry_after`` (seconds) when the server said how long to wait."""

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        status: int | None = None,
        body: str | None = None,
    ):
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status
        self.body = body[:BODY_CHARS] if body else None


class PermanentError(TeacherError):
    """Not worth retrying (bad key, bad request, unknown model)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@runtime_checkable
class TeacherBackend(Protocol):
    name: str  # "openai" | "hf" | "extractive"
    model: str

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """Answer one request (may be called concurrently up to the client's concurrency)."""
        ...

    async def complete_batch(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        """Answer several at once (in-process backends batch; HTTP ones may just gather)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Token estimate for budgeting and dry runs."""
        ...

    async def aclose(self) -> None: ...
