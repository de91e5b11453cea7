"""What the teacher's calls have cost an annotation directory, across reruns, shards and processes.

``teacher.max_cost_usd`` caps the whole annotation directory, not one process: each run keeps its
running totals in one row of ``<annotation dir>/teacher_spend.sqlite`` (committed after every answered
call), and the client's budget check adds what every other run recorded there. sqlite in WAL mode with
a busy timeout lets shards running in parallel share the file; a killed run keeps what it committed.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path

SPEND_FILE = "teacher_spend.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    run TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    started TEXT NOT NULL,
    updated TEXT NOT NULL,
    calls INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL
)
"""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class SpendLedger:
    def __init__(self, path: str | Path, busy_timeout_s: float = 60.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run = uuid.uuid4().hex
        self._started = _now()
        self._conn = sqlite3.connect(
            self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            # two shards opening a new ledger at once: switching it to WAL (and creating the table) can
            # fail with "database is locked" without waiting for the busy timeout; retry until it passes
            deadline = time.monotonic() + busy_timeout_s
            while True:
                try:
                    self._conn.execute("PRAGMA journal_mode=WAL")
                    self._conn.execute("PRAGMA synchronous=NORMAL")
                    self._conn.execute(SCHEMA)
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    def __repr__(self) -> str:
        return f"SpendLedger({str(self.path)!r})"

    def record(self, *, calls: int, prompt_tokens: int, completion_tokens: int, cost_usd: float) -> None:
        """This run's totals so far (absolute, not increments), committed now."""
        with self._lock:
            self._conn.execute(
                "INSERT INTO spend (run, pid, started, updated, calls, prompt_tokens, "
                "completion_tokens, cost_usd)"
                " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(run) DO UPDATE SET updated=excluded.updated,"
                " calls=excluded.calls, prompt_tokens=excluded.prompt_tokens,"
                " completion_tokens=excluded.completion_tokens, cost_usd=excluded.cost_usd",
                (
                    self.run,
                    os.getpid(),
                    self._started,
                    _now(),
                    int(calls),
                    int(prompt_tokens),
                    int(completion_tokens),
                    float(cost_usd),
                ),
            )

    def others_usd(self) -> float:
        """What every other run (earlier ones, and shards running now) spent on this directory."""
        with self._lock:
            row = self._conn.execute("SELECT SUM(cost_usd) FROM spend WHERE run != ?", (self.run,)).fetchone()
        return float(row[0] or 0.0)

    def total(self) -> dict:
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*), SUM(calls), SUM(prompt_tokens), SUM(completion_tokens),"
                " SUM(cost_usd) FROM spend"
            ).fetchone()
        return {
            "runs": int(row[0]),
            "calls": int(row[1] or 0),
            "prompt_tokens": int(row[2] or 0),
            "completion_tokens": int(row[3] or 0),
            "cost_usd": float(row[4] or 0.0),
        }

    def close(self) -> None:
        with self._lock:
            self._conn.close()
