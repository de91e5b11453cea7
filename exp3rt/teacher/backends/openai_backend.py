"""The ``openai`` backend: any OpenAI-compatible chat server (OpenAI, vLLM, Ollama, llama.cpp).

One :meth:`OpenAIBackend.complete` is one HTTP call. The SDK's own retries are off
(``max_retries=0``): the :class:`~exp3rt.teacher.client.TeacherClient` retries, paces and budgets,
the same way for every backend. Errors are mapped onto the contract in :mod:`.base`:

- 429, 408, 409, 5xx, timeouts, dropped connections, malformed answers -> :class:`TransientError`
  (429/503 carry ``retry_after`` from ``retry-after-ms`` or ``Retry-After``: seconds or an HTTP date);
- 400, 401, 403, 404, 422 and other 4xx -> :class:`PermanentError` with a sentence a user can act on.

The API key is read from the environment variable named by ``teacher.api_key_env``. It never appears
in a message, a log line or a repr: server messages are scrubbed of it before they are quoted
(some servers echo the key they rejected), and SDK exceptions are not chained (their requests carry
the ``Authorization`` header).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import time
from typing import Any
from urllib.parse import urlparse

import openai

from exp3rt.config import ConfigError
from exp3rt.teacher.backends.base import BODY_CHARS, ChatRequest, ChatResponse, PermanentError, TransientError

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "host.docker.internal"}
PLACEHOLDER_KEY = "sk-no-key-needed-for-local-server"


def is_local_url(base_url: str | None) -> bool:
    """A server on this machine (vLLM, Ollama, llama.cpp, a test double) that needs no real key."""
    if not base_url:
        return False
    host = (urlparse(base_url).hostname or "").lower()
    return host in LOCAL_HOSTS or host.startswith("127.")


def parse_retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), or None."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
            if math.isfinite(value):
                return max(0.0, value)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
        return max(0.0, value) if math.isfinite(value) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def estimate_tokens(text: str) -> int:
    """About four characters per token for English (tiktoken is not a dependency)."""
    return max(1, (len(text) + 3) // 4) if text else 0


class OpenAIBackend:
    name = "openai"

    def __init__(self, cfg: Any, client: openai.AsyncOpenAI | None = None, require_key: bool = True):
        """``require_key=False`` (dry runs) accepts a missing key: such a backend prices requests but
        is never asked to send one."""
        self.model: str = cfg.model
        self.base_url: str | None = cfg.base_url
        self.api_key_env: str = cfg.api_key_env
        self.timeout_s: float = float(cfg.timeout_s)
        key = os.environ.get(self.api_key_env) or ""
        if not key:
            if require_key and not is_local_url(self.base_url):
                where = self.base_url or "api.openai.com"
                raise ConfigError(
                    f"teacher.backend=openai needs an API key for {where}: set the environment variable "
                    f"${self.api_key_env} (teacher.api_key_env names it), or point teacher.base_url at a "
                    f"local server such as http://127.0.0.1:8000/v1"
                )
            key = PLACEHOLDER_KEY
        # Kept only to scrub it out of server messages; never formatted anywhere.
        self._secrets = tuple(s for s in {key, key.strip()} if len(s) >= 6)
        self._client = client or openai.AsyncOpenAI(
            api_key=key,
            base_url=self.base_url,
            organization=cfg.organization,
            timeout=self.timeout_s,
            max_retries=0,
        )

    def __repr__(self) -> str:
        return (
            f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r}, "
            f"api_key_env={self.api_key_env!r})"
        )

    # -- the contract ------------------------------------------------------------------------------
    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The chat-completion request body: what :meth:`complete` sends, and a Batch API line's ``body``."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": request.as_openai_messages(),
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "top_p": request.top_p,
        }
        if request.seed is not None:
            kwargs["seed"] = request.seed
        return kwargs

    async def complete(self, request: ChatRequest) -> ChatResponse:
        kwargs = self.request_body(request)
        try:
            resp = await self._client.chat.completions.create(**kwargs)
        except openai.APIStatusError as e:
            raise self._status_error(e) from None
        except openai.APITimeoutError:
            raise TransientError(f"request to {self._where()} timed out after {self.timeout_s:g}s") from None
        except openai.APIConnectionError as e:
            raise TransientError(f"could not reach {self._where()}: {self._scrub(str(e))}") from None
        except (openai.APIResponseValidationError, ValueError, TypeError, KeyError) as e:
            # e.g. a 200 whose body is not JSON (json.JSONDecodeError is a ValueError)
            raise TransientError(
                f"malformed response from {self._where()}: {self._scrub(str(e))[:200]}"
            ) from None
        return self._parse(resp, request)

    async def complete_batch(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        # An HTTP server batches on its side; the client normally calls complete() per request.
        answers = await asyncio.gather(*(self.complete(r) for r in requests), return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        return answers  # type: ignore[return-value]

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    async def aclose(self) -> None:
        await self._client.close()

    # -- helpers -----------------------------------------------------------------------------------
    def _where(self) -> str:
        return self.base_url or "api.openai.com"

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _parse(self, resp: Any, request: ChatRequest) -> ChatResponse:
        if isinstance(
            resp, str | bytes
        ):  # the SDK hands back the text of a 200 that was not JSON (a proxy's page)
            body = self._scrub(resp.decode(errors="replace") if isinstance(resp, bytes) else resp).strip()
            raise TransientError(
                f"malformed response from {self._where()}: the body is not a chat completion "
                f"but {len(body)} characters of text beginning {body[:120]!r}",
                body=body,
            )
        choices = getattr(resp, "choices", None)
        if not choices:
            raise TransientError(f"malformed response from {self._where()}: no choices")
        message = getattr(choices[0], "message", None)
        text = getattr(message, "content", None)
        if not isinstance(text, str):
            raise TransientError(f"malformed response from {self._where()}: the message has no text content")
        usage = getattr(resp, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        if prompt_tokens is None:  # some servers omit usage: estimate, so budgets still hold
            prompt_tokens = sum(estimate_tokens(c) + 3 for _, c in request.messages)
        if completion_tokens is None:
            completion_tokens = estimate_tokens(text)
        return ChatResponse(
            text=text,
            prompt_tokens=int(prompt_tokens),
            completion_tokens=int(completion_tokens),
            model=getattr(resp, "model", None) or self.model,
            finish_reason=getattr(choices[0], "finish_reason", None),
        )

    def _raw_body(self, e: openai.APIStatusError) -> str | None:
        """The error body as the server sent it (scrubbed, first BODY_CHARS characters)."""
        try:
            text = e.response.text if e.response is not None else None
        except Exception:  # noqa: BLE001 - only for the record
            text = None
        if not text and e.body is not None:
            text = e.body if isinstance(e.body, str) else json.dumps(e.body)
        return self._scrub(text).strip()[:BODY_CHARS] if text else None

    def _server_message(self, e: openai.APIStatusError) -> str:
        body = e.body
        msg = None
        if isinstance(body, dict):
            err = body.get("error", body)
            msg = err.get("message") if isinstance(err, dict) else str(err)
        if not msg:
            try:
                msg = json.dumps(body) if body is not None else e.response.text
            except Exception:  # noqa: BLE001 - only for a message
                msg = ""
        return self._scrub(str(msg)).strip()[:300]

    def _status_error(self, e: openai.APIStatusError) -> Exception:
        status = e.status_code
        said = self._server_message(e)
        said_part = f" (server said: {said})" if said else ""
        where = self._where()
        if status == 429 or status == 408 or status == 409 or status >= 500:
            retry_after = parse_retry_after(e.response.headers) if e.response is not None else None
            label = "rate limited" if status == 429 else "server error"
            return TransientError(
                f"{label} (HTTP {status}) from {where}{said_part}",
                retry_after,
                status,
                body=self._raw_body(e),
            )
        if status == 401:
            return PermanentError(
                f"the API key in ${self.api_key_env} was rejected by {where} (HTTP 401){said_part}; "
                f"set a valid key in ${self.api_key_env}",
                status,
            )
        if status == 403:
            return PermanentError(
                f"the API key in ${self.api_key_env} may not use model '{self.model}' at {where} (HTTP 403)"
                f"{said_part}; check teacher.model, teacher.organization and the key's project",
                status,
            )
        if status == 404:
            return PermanentError(
                f"model '{self.model}' or the chat endpoint was not found at {where} (HTTP 404){said_part}; "
                f"check teacher.model and teacher.base_url (it usually ends in /v1)",
                status,
            )
        return PermanentError(
            f"{where} rejected the request (HTTP {status}){said_part}; check the prompt length and "
            f"teacher.max_tokens / temperature / top_p for model '{self.model}'",
            status,
        )
