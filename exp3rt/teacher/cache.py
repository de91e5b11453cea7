"""The teacher's answer cache: one sqlite file, one row per answered request.

Rows are keyed by :meth:`ChatRequest.cache_key` (backend, model, prompt version, messages and
sampling parameters), so a cached answer is never paid for twice. Each answer is committed as it
arrives: a killed run loses nothing it was answered. The file is in WAL mode with a busy timeout, so
several processes (shards of one stage) can read and write it at once; the first answer stored for
a key wins. Only the request's messages and parameters are stored — never headers or keys.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exp3rt.teacher.backends.base import ChatRequest, ChatResponse

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    stage TEXT NOT NULL,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    request TEXT NOT NULL,
    answer TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    finish_reason TEXT,
    created TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class CachedAnswer:
    key: str
    stage: str
    backend: str
    model: str
    prompt_version: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    finish_reason: str | None
    created: str

    def to_response(self) -> ChatResponse:
        return ChatResponse(
            text=self.text,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            model=self.model,
            finish_reason=self.finish_reason,
            cached=True,
            cost_usd=self.cost_usd,
        )


def request_json(request: ChatRequest) -> str:
    """What the cache keeps of a request: the messages and sampling parameters (no payload)."""
    return json.dumps(
        {
            "messages": request.as_openai_messages(),
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "top_p": request.top_p,
            "seed": request.seed,
            "attempt": request.attempt,
        },
        ensure_ascii=False,
    )


class AnswerCache:
    def __init__(self, path: str | Path, busy_timeout_s: float = 60.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit (isolation_level=None): every put is its own committed transaction.
        self._conn = sqlite3.connect(
            self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()  # the connection may be used from worker threads too
        with self._lock:
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a committed answer survives a killed process (not a power cut).
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(SCHEMA)

    def __repr__(self) -> str:
        return f"AnswerCache({str(self.path)!r})"

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def get(self, key: str) -> CachedAnswer | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT key, stage, backend, model, prompt_version, answer, prompt_tokens, completion_tokens,"
                " cost_usd, finish_reason, created FROM answers WHERE key = ?",
                (key,),
            ).fetchone()
        return CachedAnswer(*row) if row else None

    def get_many(self, keys: list[str]) -> dict[str, CachedAnswer]:
        """Look up many keys at once (chunks of 500, under sqlite's variable limit)."""
        out: dict[str, CachedAnswer] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._conn.execute(
                    "SELECT key, stage, backend, model, prompt_version, answer, prompt_tokens,"
                    " completion_tokens, cost_usd, finish_reason, created FROM answers WHERE key IN "
                    f"({marks})",
                    chunk,
                ).fetchall()
            for row in rows:
                out[row[0]] = CachedAnswer(*row)
        return out

    def put(
        self, key: str, request: ChatRequest, response: ChatResponse, *, backend: str, model: str
    ) -> bool:
        """Store one answer and commit it now. Returns False when the key was already stored (the
        first answer wins, e.g. when two shards answered the same request)."""
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO answers (key, stage, backend, model, prompt_version, request, answer, "
                "prompt_tokens,"
                " completion_tokens, cost_usd, finish_reason, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(key) DO NOTHING",
                (
                    key,
                    request.stage,
                    backend,
                    model,
                    request.prompt_version,
                    request_json(request),
                    response.text,
                    int(response.prompt_tokens),
                    int(response.completion_tokens),
                    float(response.cost_usd),
                    response.finish_reason,
                    created,
                ),
            )
        return cur.rowcount == 1

    def stats(self) -> dict[str, Any]:
        """Entries, tokens and cost in the file, in total and per stage."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT stage, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd)"
                " FROM answers GROUP BY stage ORDER BY stage"
            ).fetchall()
        by_stage = {
            stage: {
                "entries": n,
                "prompt_tokens": p or 0,
                "completion_tokens": c or 0,
                "cost_usd": cost or 0.0,
            }
            for stage, n, p, c, cost in rows
        }
        return {
            "path": str(self.path),
            "entries": sum(s["entries"] for s in by_stage.values()),
            "prompt_tokens": sum(s["prompt_tokens"] for s in by_stage.values()),
            "completion_tokens": sum(s["completion_tokens"] for s in by_stage.values()),
            "cost_usd": sum(s["cost_usd"] for s in by_stage.values()),
            "by_stage": by_stage,
        }

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
