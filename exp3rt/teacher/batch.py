"""``teacher.mode=batch``: the teacher's requests through the OpenAI Batch API (half the price, within 24 h).

:class:`BatchTeacherClient` is a :class:`~exp3rt.teacher.client.TeacherClient` whose ``run`` sends the
uncached requests of each call as Batch API input lines (``custom_id`` = the answer-cache key) instead of
one HTTP call each:

1. **Resume first.** Every batch this directory submitted and has not collected is listed in
   ``<annotation dir>/teacher_batches.sqlite`` (:class:`BatchLedger`). Those covering any request of this
   call are polled and collected before anything new is submitted: a rerun after a kill pays nothing twice.
2. **Submit.** The requests still unanswered are split into batches within ``teacher.batch.max_requests``
   lines and ``max_bytes`` bytes, uploaded (``files.create(purpose="batch")``) and created
   (``batches.create``). Before each batch the budget is checked at batch prices; a batch that could pass
   ``teacher.max_cost_usd`` is not submitted. Each batch's lines (with each request) are committed to the
   ledger before ``batches.create`` is called, and the batch id the moment it returns, before any poll; a
   create that answered with an error is looked up by its input file before it is asked again.
3. **Poll** with a growing interval (``poll_initial_s`` doubling up to ``poll_max_s``), logging one progress
   line per batch per poll.
4. **Collect.** Output and error files are downloaded; each answer goes into the same answer cache as a
   sync call (and the spend ledger, at batch prices), so the stage reads it like any cached answer and its
   format check and repair requests work as in sync mode (repairs go out as the next batch). A failed
   line, a malformed output line, or a line an expired / cancelled / failed batch left unanswered is
   asked again in a follow-up batch, up to ``max_failed_rounds`` follow-ups, then recorded as a failed
   result (it ends in ``<stage>.failures.jsonl``).

With ``teacher.batch.submit_only=true`` the run submits (or checks once on what is pending) and stops with
:class:`BatchPending`; a later run without it collects.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
from openai.types.chat import ChatCompletion

from exp3rt.teacher.backends.base import (
    ChatRequest,
    ChatResponse,
    PermanentError,
    TeacherError,
    TransientError,
)
from exp3rt.teacher.cache import request_json
from exp3rt.teacher.client import BudgetExceeded, Result, TeacherClient, _field, raised_cap, usd

log = logging.getLogger(__name__)

BATCH_FILE = "teacher_batches.sqlite"
ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS batches (
        id TEXT PRIMARY KEY, stage TEXT NOT NULL, input_file_id TEXT NOT NULL, requests INTEGER NOT NULL,
        status TEXT NOT NULL, submitted TEXT NOT NULL, updated TEXT NOT NULL, """
    """collected INTEGER NOT NULL DEFAULT 0,
        output_file_id TEXT, error_file_id TEXT, answered INTEGER, failed INTEGER, malformed INTEGER,
        unanswered INTEGER)""",
    """CREATE TABLE IF NOT EXISTS lines (
        batch_id TEXT NOT NULL, custom_id TEXT NOT NULL, request TEXT NOT NULL, """
    """PRIMARY KEY (batch_id, custom_id))""",
)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def request_record(request: ChatRequest) -> str:
    """What a ledger line keeps of a request: enough to store its answer in the cache later."""
    return json.dumps(
        {
            "stage": request.stage,
            "prompt_version": request.prompt_version,
            **json.loads(request_json(request)),
        },
        ensure_ascii=False,
    )


def request_from_record(raw: str) -> ChatRequest:
    r = json.loads(raw)
    return ChatRequest(
        stage=r["stage"],
        messages=tuple((m["role"], m["content"]) for m in r["messages"]),
        prompt_version=r["prompt_version"],
        temperature=r["temperature"],
        max_tokens=r["max_tokens"],
        top_p=r["top_p"],
        seed=r["seed"],
        attempt=r["attempt"],
    )


SUBMITTING = "submitting:"  # the id of a row recorded before batches.create: "submitting:<input file id>"


@dataclass
class PendingBatch:
    id: str
    stage: str
    requests: dict[str, ChatRequest]  # custom_id (cache key) -> request
    input_file_id: str = ""

    @property
    def submitting(self) -> bool:
        """Recorded before ``batches.create`` and not confirmed: the batch may or may not exist."""
        return self.id.startswith(SUBMITTING)


class BatchLedger:
    """The batches an annotation directory submitted: one sqlite file, each batch committed with its lines
    in one transaction as soon as it exists, and marked collected once its answers are in the cache."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 60.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")  # a submitted batch id must survive anything
            for stmt in SCHEMA:
                self._conn.execute(stmt)

    def __repr__(self) -> str:
        return f"BatchLedger({str(self.path)!r})"

    def add(
        self, batch_id: str, stage: str, input_file_id: str, requests: dict[str, ChatRequest], status: str
    ) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT INTO batches (id, stage, input_file_id, requests, status, submitted, updated)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (batch_id, stage, input_file_id, len(requests), status, _now(), _now()),
                )
                self._conn.executemany(
                    "INSERT INTO lines (batch_id, custom_id, request) VALUES (?,?,?)",
                    [(batch_id, k, request_record(r)) for k, r in requests.items()],
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def pending(self) -> list[PendingBatch]:
        """Submitted batches not collected yet (and ones about to be created), oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, stage, input_file_id FROM batches WHERE collected = 0 ORDER BY rowid"
            ).fetchall()
            out = []
            for batch_id, stage, file_id in rows:
                lines = self._conn.execute(
                    "SELECT custom_id, request FROM lines WHERE batch_id = ?", (batch_id,)
                ).fetchall()
                out.append(
                    PendingBatch(batch_id, stage, {k: request_from_record(r) for k, r in lines}, file_id)
                )
        return out

    def confirm(self, placeholder: str, batch_id: str, status: str) -> None:
        """``batches.create`` answered: the row recorded before it gets the batch's id."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "UPDATE batches SET id = ?, status = ?, updated = ? WHERE id = ?",
                    (batch_id, status, _now(), placeholder),
                )
                self._conn.execute(
                    "UPDATE lines SET batch_id = ? WHERE batch_id = ?", (batch_id, placeholder)
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def drop(self, placeholder: str) -> None:
        """No batch was created from a recorded upload: forget the row (its requests are asked again)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("DELETE FROM lines WHERE batch_id = ?", (placeholder,))
            self._conn.execute("DELETE FROM batches WHERE id = ?", (placeholder,))
            self._conn.execute("COMMIT")

    def set_status(self, batch_id: str, status: str) -> None:
        with self._lock:
            self._conn.execute(
                "UPDATE batches SET status = ?, updated = ? WHERE id = ?", (status, _now(), batch_id)
            )

    def collected(
        self,
        batch_id: str,
        status: str,
        output_file_id: str | None,
        error_file_id: str | None,
        counts: dict[str, int],
    ) -> None:
        with self._lock:
            self._conn.execute(
                "UPDATE batches SET status = ?, updated = ?, collected = 1, output_file_id = ?, "
                "error_file_id = ?,"
                " answered = ?, failed = ?, malformed = ?, unanswered = ? WHERE id = ?",
                (
                    status,
                    _now(),
                    output_file_id,
                    error_file_id,
                    counts["answered"],
                    counts["failed"],
                    counts["malformed"],
                    counts["unanswered"],
                    batch_id,
                ),
            )

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._conn.execute("SELECT * FROM batches ORDER BY rowid")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class BatchPending(TeacherError):
    """``submit_only=true``: batches are submitted (or still running); a later run collects them."""

    def __init__(self, message: str, batch_ids: list[str], requests: int):
        super().__init__(message)
        self.batch_ids = batch_ids
        self.requests = requests


@dataclass
class BatchUsage:
    submitted_batches: int = 0
    submitted_lines: int = 0
    resumed_batches: int = 0
    polls: int = 0
    failed_lines: int = 0  # lines answered with an error (error file, or a non-200 status)
    malformed_lines: int = 0  # output lines that were not a usable answer
    unanswered_lines: int = 0  # lines a finished batch left without any answer (expired, cancelled, failed)
    expired_batches: int = 0
    cancelled_batches: int = 0
    failed_batches: int = 0


class BatchTeacherClient(TeacherClient):
    mode = "batch"

    def __init__(
        self,
        backend,
        cfg,
        cache,
        progress: bool = False,
        rng=None,
        ledger=None,
        batches: BatchLedger | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ):
        super().__init__(backend, cfg, cache, progress=progress, rng=rng, ledger=ledger)
        if cache is None or batches is None:
            raise ValueError("teacher.mode=batch needs an answer cache and a batch ledger")
        bc = _field(cfg, "batch")
        self.price_factor = float(_field(bc, "price_factor", 0.5))
        self.max_requests = int(_field(bc, "max_requests", 50000))
        self.max_bytes = int(_field(bc, "max_bytes", 190_000_000))
        self.poll_initial_s = float(_field(bc, "poll_initial_s", 5.0))
        self.poll_max_s = float(_field(bc, "poll_max_s", 300.0))
        self.submit_only = bool(_field(bc, "submit_only", False))
        self.max_failed_rounds = int(_field(bc, "max_failed_rounds", 2))
        self.batches = batches
        self.batch_usage = BatchUsage()
        self._sleep = sleep
        self._oai = backend._client

    def usage_summary(self) -> dict[str, Any]:
        return {
            **super().usage_summary(),
            "mode": "batch",
            "price_factor": self.price_factor,
            **{f"batch_{k}": v for k, v in vars(self.batch_usage).items()},
        }

    # -- the run -----------------------------------------------------------------------------------
    async def run(
        self, requests: Iterable[ChatRequest], on_result: Callable[[Result], Any] | None = None
    ) -> list[Result]:
        t0 = time.monotonic()
        requests, keys, results = self._start(requests)
        todo: dict[str, ChatRequest] = {}
        for key, request in zip(keys, requests, strict=True):
            todo.setdefault(key, request)
        answered: dict[str, ChatResponse] = {}  # answered by a batch collected in this run
        errors: dict[str, str] = {}  # the last error of each request still unanswered
        rounds: dict[str, int] = {}  # batches that came back without an answer for it
        budget_stop = False
        try:
            resumed = [b for b in self.batches.pending() if todo.keys() & b.requests.keys()]
            for pb in [b for b in resumed if b.submitting]:  # a run stopped around batches.create
                found = await self._find_batch(pb.input_file_id)
                if found is None:
                    log.info(
                        "teacher batch: no batch was created from %s; its %d requests are asked again",
                        pb.input_file_id,
                        len(pb.requests),
                    )
                    self.batches.drop(pb.id)
                    resumed.remove(pb)
                else:
                    self.batches.confirm(pb.id, found.id, found.status)
                    pb.id = found.id
            if resumed:
                n = sum(len(b.requests) for b in resumed)
                log.info(
                    "teacher batch: resuming %d submitted batch(es) (%d requests) recorded in %s: %s",
                    len(resumed),
                    n,
                    self.batches.path,
                    ", ".join(b.id for b in resumed),
                )
                self.batch_usage.resumed_batches += len(resumed)
                await self._wait(resumed, answered, errors, rounds, once=self.submit_only)
            while True:
                cached = self.cache.get_many(list(todo))
                missing = [k for k in todo if k not in cached and k not in answered]
                still = {k for b in self.batches.pending() for k in b.requests}
                waiting = [k for k in missing if k in still]
                if waiting and self.submit_only:  # what an earlier run submitted is still running
                    raise self._pending_stop(submitted=[], waiting=len(waiting))
                missing = [k for k in missing if rounds.get(k, 0) <= self.max_failed_rounds]
                if not missing:
                    break
                submitted: list[PendingBatch] = []
                for chunk in self._split(missing, todo):
                    reserve = sum(self.cost(*self._worst_tokens(todo[k])) for k in chunk)
                    if self.max_cost_usd is not None and (
                        self._spent_elsewhere() + self.usage.cost_usd + self._reserved + reserve
                        > self.max_cost_usd
                    ):
                        budget_stop = True
                        break
                    submitted.append(await self._submit(chunk, todo))
                    self._reserved += reserve
                if submitted and self.submit_only:
                    raise self._pending_stop(submitted=submitted, waiting=0)
                try:
                    await self._wait(submitted, answered, errors, rounds)
                finally:
                    self._reserved = 0.0
                if budget_stop or not submitted:
                    break
        finally:
            self.usage.wall_s += time.monotonic() - t0
        cached = self.cache.get_many(list(todo))
        firsts: set[str] = set()
        for result in results:
            key = result.key
            if key in answered and key not in firsts:
                firsts.add(key)
                result.response, result.sent = answered[key], True
            elif key in cached:
                result.response, result.from_cache = cached[key].to_response(), True
                self.usage.cached += 1
            elif key in errors:  # asked, and no batch answered it: a failure, recorded like a sync one
                result.sent, result.error = (
                    True,
                    TransientError(
                        f"batch: {errors.get(key, 'no answer')} (asked in {rounds.get(key, 0)} batches; "
                        f"teacher.batch.max_failed_rounds={self.max_failed_rounds})"
                    ),
                )
                self.usage.failed += 1
            if on_result is not None and result.status != "not_sent":
                out = on_result(result)
                if asyncio.iscoroutine(out):
                    await out
        not_sent = sum(1 for r in results if r.status == "not_sent")
        self.usage.not_sent += not_sent
        self.usage.calls += len({r.key for r in results if r.sent})  # distinct requests a batch was asked
        if budget_stop:
            assert self.max_cost_usd is not None
            total = self._spent_elsewhere() + self.usage.cost_usd
            raise BudgetExceeded(
                f"teacher.max_cost_usd={usd(self.max_cost_usd)} reached before submitting the next "
                "batch (batch "
                f"prices: teacher.prices x teacher.batch.price_factor={self.price_factor:g}): "
                f"${usd(total)} spent on "
                f"the annotation directory in total, {not_sent} requests not submitted. Answered calls "
                "are cached; "
                "to go on, raise the cap, e.g. rerun with "
                f"teacher.max_cost_usd={raised_cap(self.max_cost_usd, total)}",
                spent_usd=total,
                calls=self.usage.answered,
                not_sent=not_sent,
                results=results,
            )
        return results

    def _pending_stop(self, submitted: list[PendingBatch], waiting: int) -> BatchPending:
        pending = self.batches.pending()
        ids = [b.id for b in pending]
        n = sum(len(b.requests) for b in pending)
        stage = pending[0].stage if pending else "?"
        new = (
            f"submitted {len(submitted)} batch(es) with {sum(len(b.requests) for b in submitted)} requests; "
            if submitted
            else ""
        )
        return BatchPending(
            f"teacher.batch.submit_only=true: {new}{len(ids)} batch(es) with {n} requests (stage "
            f"{stage}) are with the "
            f"Batch API ({', '.join(ids)}), recorded in {self.batches.path}. A later run collects "
            "them: rerun the same "
            "command without teacher.batch.submit_only=true (or with it, to submit the next stage "
            "once these are done)",
            ids,
            n,
        )

    def _split(self, keys: list[str], todo: dict[str, ChatRequest]) -> list[list[str]]:
        chunks: list[list[str]] = [[]]
        size = 0
        for key in keys:
            n = len(self._line(key, todo[key])) + 1
            if chunks[-1] and (len(chunks[-1]) >= self.max_requests or size + n > self.max_bytes):
                chunks.append([])
                size = 0
            chunks[-1].append(key)
            size += n
        return [c for c in chunks if c]

    def _line(self, key: str, request: ChatRequest) -> bytes:
        return json.dumps(
            {"custom_id": key, "method": "POST", "url": ENDPOINT, "body": self.backend.request_body(request)},
            ensure_ascii=False,
        ).encode()

    async def _api(self, what: str, call: Callable[[], Any], retry: bool = True) -> Any:
        """One Batch/Files API call, errors mapped like a chat call's; transient ones retried with backoff."""
        failures = 0
        while True:
            try:
                return await call()
            except openai.APIStatusError as e:
                err: TeacherError = self.backend._status_error(e)
            except openai.APITimeoutError:
                err = TransientError(f"{what} at {self.backend._where()} timed out")
            except openai.APIConnectionError as e:
                err = TransientError(
                    f"{what}: could not reach {self.backend._where()}: {self.backend._scrub(str(e))}"
                )
            if isinstance(err, PermanentError) and err.status == 404 and "batch" in what:
                raise PermanentError(
                    f"{what}: {self.backend._where()} does not know it (HTTP 404). It is recorded in "
                    f"{self.batches.path}; "
                    f"a batch is only visible to the account and server it was submitted to: rerun with the "
                    f"teacher.base_url and the key in ${self.backend.api_key_env} it was submitted with",
                    404,
                ) from None
            if isinstance(err, PermanentError):
                raise PermanentError(f"{what}: {err}", err.status) from None
            failures += 1
            if not retry or failures > self.max_retries:
                raise TransientError(f"{what} failed {failures} times: {err}") from None
            delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (failures - 1))
            log.warning("teacher batch: %s failed (%s); trying again in %.1fs", what, err, delay)
            await self._sleep(delay)

    async def _submit(self, chunk: list[str], todo: dict[str, ChatRequest]) -> PendingBatch:
        stage = todo[chunk[0]].stage
        data = b"".join(self._line(k, todo[k]) + b"\n" for k in chunk)
        upload = await self._api(
            "uploading a batch input file",
            lambda: self._oai.files.create(
                file=(f"exp3rt-{stage}.jsonl", data, "application/jsonl"), purpose="batch"
            ),
        )
        requests = {k: todo[k] for k in chunk}
        # Recorded before the create: a run killed around it finds the batch (or its absence) by its input
        # file.
        placeholder = SUBMITTING + upload.id
        self.batches.add(placeholder, stage, upload.id, requests, "submitting")
        failures = 0
        while True:
            try:
                batch = await self._api(
                    "creating a batch",
                    lambda: self._oai.batches.create(
                        input_file_id=upload.id,
                        endpoint=ENDPOINT,
                        completion_window="24h",
                        metadata={"exp3rt_stage": stage},
                    ),
                    retry=False,
                )
                break
            except TransientError as e:
                # The create may have made the batch all the same: look before asking again (never pay twice).
                try:
                    batch = await self._find_batch(upload.id)
                except TeacherError as lookup:
                    raise TransientError(
                        f"{e}; whether the batch exists could not be checked ({lookup}). Rerun the "
                        "same command: it "
                        f"looks for the batch made from {upload.id} before submitting anything"
                    ) from None
                if batch is not None:
                    log.info(
                        "teacher batch: the create of %s answered with an error, but the batch exists",
                        batch.id,
                    )
                    break
                failures += 1
                if failures > self.max_retries:
                    self.batches.drop(placeholder)
                    raise
                await self._sleep(min(self.backoff_max_s, self.backoff_base_s * 2 ** (failures - 1)))
        self.batches.confirm(placeholder, batch.id, batch.status)  # before the first poll
        self.batch_usage.submitted_batches += 1
        self.batch_usage.submitted_lines += len(chunk)
        log.info(
            "teacher batch: submitted %s (stage %s, %d requests, %d bytes); recorded in %s",
            batch.id,
            stage,
            len(chunk),
            len(data),
            self.batches.path,
        )
        return PendingBatch(batch.id, stage, requests)

    async def _find_batch(self, input_file_id: str) -> Any:
        """The batch created from ``input_file_id``, or None (the Batch API lists newest first)."""

        async def look() -> Any:
            async for batch in self._oai.batches.list(limit=100):
                if batch.input_file_id == input_file_id:
                    return batch
            return None

        return await self._api(f"looking for the batch made from {input_file_id}", look)

    async def _wait(
        self,
        batches: list[PendingBatch],
        answered: dict[str, ChatResponse],
        errors: dict[str, str],
        rounds: dict[str, int],
        once: bool = False,
    ) -> None:
        """Poll until every batch is finished (``once``: one look), collecting each as it finishes."""
        active = {b.id: b for b in batches}
        delay = self.poll_initial_s
        while active:
            for batch_id in list(active):
                pb = active[batch_id]
                try:
                    batch = await self._api(
                        f"checking batch {batch_id}", lambda i=batch_id: self._oai.batches.retrieve(i)
                    )
                except TransientError as e:
                    log.warning("teacher batch: %s; polling again later", e)
                    continue
                self.batch_usage.polls += 1
                c = batch.request_counts
                log.info(
                    "teacher batch %s (stage %s): %s, %d of %d requests done, %d failed",
                    batch_id,
                    pb.stage,
                    batch.status,
                    getattr(c, "completed", 0) or 0,
                    getattr(c, "total", 0) or len(pb.requests),
                    getattr(c, "failed", 0) or 0,
                )
                self.batches.set_status(batch_id, batch.status)
                if batch.status in TERMINAL:
                    await self._collect(pb, batch, answered, errors, rounds)
                    del active[batch_id]
            if active and not once:
                await self._sleep(delay)
                delay = min(self.poll_max_s, delay * 2)
            elif once:
                return

    async def _download(self, file_id: str) -> str:
        content = await self._api(
            f"downloading batch file {file_id}", lambda: self._oai.files.content(file_id)
        )
        return content.text

    async def _collect(
        self,
        pb: PendingBatch,
        batch: Any,
        answered: dict[str, ChatResponse],
        errors: dict[str, str],
        rounds: dict[str, int],
    ) -> None:
        counts = {"answered": 0, "failed": 0, "malformed": 0, "unanswered": 0}
        seen: set[str] = set()
        bu = self.batch_usage
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            for raw in (await self._download(file_id)).splitlines():
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                    key = line["custom_id"]
                    request = pb.requests[key]
                except (ValueError, KeyError, TypeError):
                    counts["malformed"] += 1
                    bu.malformed_lines += 1
                    log.warning(
                        "teacher batch %s: an output line is not a readable answer (%d characters "
                        "beginning %r); counted as malformed",
                        pb.id,
                        len(raw),
                        self.backend._scrub(raw[:80]),
                    )
                    continue
                if key in seen:
                    continue
                if isinstance(line.get("error"), dict) and line["error"].get("code") in (
                    "batch_expired",
                    "batch_cancelled",
                ):
                    continue  # never run: counted below with the lines the batch left unanswered
                seen.add(key)
                response_part = line.get("response") or {}
                error = line.get("error")
                status = response_part.get("status_code") if isinstance(response_part, dict) else None
                if error or status != 200:
                    message = (error.get("message") if isinstance(error, dict) else None) or _error_message(
                        response_part.get("body") if isinstance(response_part, dict) else None
                    )
                    code = (error.get("code") if isinstance(error, dict) else None) or f"HTTP {status}"
                    errors[key] = f"the batch line failed ({code}): {self.backend._scrub(str(message))[:300]}"
                    rounds[key] = rounds.get(key, 0) + 1
                    counts["failed"] += 1
                    bu.failed_lines += 1
                    continue
                try:
                    completion = ChatCompletion.model_validate(response_part["body"])
                    response = self.backend._parse(completion, request)
                except (TeacherError, ValueError, KeyError, TypeError) as e:
                    errors[key] = f"a malformed batch output line: {self.backend._scrub(str(e))[:200]}"
                    rounds[key] = rounds.get(key, 0) + 1
                    counts["malformed"] += 1
                    bu.malformed_lines += 1
                    continue
                self._store(key, request, response, answered)
                counts["answered"] += 1
        why = {
            "expired": "the batch expired (24 h) before answering it",
            "cancelled": "the batch was cancelled",
            "failed": "the batch failed: " + _batch_errors(batch),
        }.get(batch.status, "the batch output has no readable line for it")
        for key in pb.requests.keys() - seen:
            errors[key] = why
            rounds[key] = rounds.get(key, 0) + 1
            counts["unanswered"] += 1
            bu.unanswered_lines += 1
        if batch.status == "expired":
            bu.expired_batches += 1
        elif batch.status == "cancelled":
            bu.cancelled_batches += 1
        elif batch.status == "failed":
            bu.failed_batches += 1
        self.batches.collected(pb.id, batch.status, batch.output_file_id, batch.error_file_id, counts)
        log.info(
            "teacher batch %s (stage %s) collected: %s; %d answered, %d failed, %d malformed, %d unanswered",
            pb.id,
            pb.stage,
            batch.status,
            counts["answered"],
            counts["failed"],
            counts["malformed"],
            counts["unanswered"],
        )

    def _store(
        self, key: str, request: ChatRequest, response: ChatResponse, answered: dict[str, ChatResponse]
    ) -> None:
        self.usage.attempts += 1
        answered[key] = self._account_answer(key, request, response)


def _error_message(body: Any) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        return str(err.get("message") if isinstance(err, dict) else err)
    return str(body)[:200] if body is not None else "no answer"


def _batch_errors(batch: Any) -> str:
    data = getattr(getattr(batch, "errors", None), "data", None) or []
    said = "; ".join(f"{getattr(e, 'code', '')}: {getattr(e, 'message', '')}" for e in data)
    return said or "no reason given"
