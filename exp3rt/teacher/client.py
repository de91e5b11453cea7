"""The teacher client: what every backend gets around it — cache, concurrency, pacing, retries,
budget and usage accounting.

``TeacherClient(backend, cfg, cache).run(requests)`` answers a list of :class:`ChatRequest` and
returns one :class:`Result` per request, in request order:

1. **Cache first.** Requests whose key (:meth:`ChatRequest.cache_key`) is in the
   :class:`AnswerCache` are answered from it and never sent. Identical requests in one run are sent
   once. Every fresh answer is committed to the cache the moment it arrives, before ``on_result``
   sees it, so a killed run loses nothing it was answered.
2. **Concurrency and pacing.** ``teacher.concurrency`` workers pull requests in order (at most that
   many in flight). ``requests_per_minute`` and ``tokens_per_minute`` (estimated prompt tokens +
   ``max_tokens``) are token buckets every send waits on. A 429 with ``Retry-After`` also pauses
   every worker for that long: the whole client backs off, not just the request that was refused.
3. **Retries.** :class:`TransientError` is retried up to ``max_retries`` times, waiting
   ``retry_after`` when the server gave one, otherwise ``min(backoff_max_s, backoff_base_s * 2**n)``
   with jitter (half that, plus a uniform draw over the other half). A request still failing is
   recorded as a failed :class:`Result` (never dropped); the run goes on. :class:`PermanentError`
   (a rejected key, an unknown model) stops the run at once: nothing more is sent, requests in flight
   finish, and ``run`` raises a :class:`PermanentError` saying how many requests were not sent.
4. **Budget.** With ``max_cost_usd`` set, each send first reserves its worst-case cost (estimated
   prompt tokens + ``max_tokens`` at ``teacher.prices[model]``); when spent + reserved would pass the
   budget, the request is not sent, scheduling stops, requests in flight finish, and ``run`` raises
   :class:`BudgetExceeded`. Reservations are replaced by actual usage as answers arrive, and the prompt
   estimate is scaled up when the server counts more tokens than it predicted. Cached answers cost
   nothing. With a :class:`~exp3rt.teacher.spend.SpendLedger` (``exp3rt-annotate`` keeps one per
   annotation directory) the budget also counts what earlier runs and parallel shards spent there, and
   this run's spend is committed to it after every answer: the cap holds for the directory in total.
5. **Accounting.** :meth:`usage_summary` (calls, cache hits, retries, failures, tokens, cost, wall time,
   rates) and a tqdm progress bar (off when not a TTY or ``progress=False``).

In-process backends (``hf``, or any backend with ``batched = True``) get uncached requests in groups
of ``teacher.batch_size`` through ``complete_batch``; HTTP backends get one ``complete`` per request.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from exp3rt.config import ConfigError, TeacherConf
from exp3rt.teacher.backends.base import (
    ChatRequest,
    ChatResponse,
    PermanentError,
    TeacherBackend,
    TeacherError,
    TransientError,
)
from exp3rt.teacher.cache import AnswerCache
from exp3rt.teacher.spend import SpendLedger

MESSAGE_OVERHEAD_TOKENS = 3  # role markers per chat message

log = logging.getLogger(__name__)


def usd(amount: float) -> str:
    """Dollars with cents, or three significant digits below a dime (0.50, 0.0035)."""
    return f"{amount:.2f}" if amount >= 0.1 or amount == 0 else f"{amount:.3g}"


def raised_cap(cap: float, spent: float) -> str:
    """A cap to suggest after a budget stop: double the old one, and at least what was spent plus it."""
    return f"{math.ceil(max(2 * cap, spent + cap) * 100) / 100:g}"


def price_advice(model: str) -> str:
    """How to give ``model`` a price: a Hydra override when the name can be a key in one, else a YAML line."""
    entry = "{input_per_1m: 1.0, output_per_1m: 2.0}"
    override = f"+teacher.prices={{{model}: {entry}}}"
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_override(override)
        ok = list(parsed.value()) == [model]
    except Exception:  # noqa: BLE001 - any parse failure: the YAML route
        ok = False
    how = (
        f"add its price with the override {override}"
        if ok
        else f"add its price to your teacher's YAML under 'prices:' as the line  {json.dumps(model)}: {entry}"
    )
    return (
        how + " (USD per million input / output tokens: put your provider's prices in place of 1.0 and 2.0)"
    )


class BudgetExceeded(TeacherError):
    """The run stopped before ``teacher.max_cost_usd`` was passed; ``results`` holds what was done."""

    def __init__(
        self,
        message: str,
        *,
        spent_usd: float,
        calls: int,
        not_sent: int,
        results: list[Result] | None = None,
    ):
        super().__init__(message)
        self.spent_usd = spent_usd
        self.calls = calls
        self.not_sent = not_sent
        self.results = results or []


_SCHEMA = TeacherConf()


def setting(cfg: Any, name: str) -> Any:
    """``teacher.<name>`` of ``cfg``; a key that a partial config (a dict, a test's object) leaves out
    takes the schema's default, the value a composed run would have."""
    return _field(cfg, name, getattr(_SCHEMA, name))


@dataclass
class Result:
    """The outcome for one request: ``response`` (fresh or cached) or ``error`` or neither (not sent)."""

    index: int
    request: ChatRequest
    key: str
    response: ChatResponse | None = None
    error: TeacherError | None = None
    from_cache: bool = False
    sent: bool = False
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.response is not None

    @property
    def status(self) -> str:
        if self.from_cache:
            return "cached"
        if self.response is not None:
            return "answered"
        return "failed" if self.error is not None else "not_sent"


@dataclass
class Usage:
    requests: int = 0  # requests handed to run()
    cached: int = 0  # answered from the cache (or a duplicate in the same run)
    calls: int = 0  # distinct requests sent (at least one attempt)
    answered: int = 0  # distinct requests answered fresh
    attempts: int = 0  # backend calls, retries included
    retries: int = 0
    failed: int = 0  # requests that ended with an error
    not_sent: int = 0  # requests left unsent (budget or a permanent error)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    wall_s: float = 0.0


class RateLimiter:
    """An async token bucket: ``per_minute`` units refill continuously up to ``capacity``.

    A take larger than the bucket waits for a full bucket and leaves it in debt, so big requests
    still pass and are paid for by the waits of the ones after them. Waiters are served in order.
    """

    def __init__(self, per_minute: float, capacity: float | None = None):
        if per_minute <= 0:
            raise ValueError("a rate limit must be positive")
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, capacity if capacity is not None else self.rate)
        self.level = self.capacity
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self, amount: float = 1.0) -> None:
        async with self._lock:
            need = min(amount, self.capacity)
            while True:
                now = time.monotonic()
                self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.level >= need:
                    self.level -= amount
                    return
                await asyncio.sleep((need - self.level) / self.rate)


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


@dataclass
class _RunState:
    units: Iterator[list[str]]
    pending: dict[str, list[int]]
    results: list[Result]
    on_result: Callable[[Result], Any] | None
    bar: Any
    stop_reason: str | None = None  # "budget" | "permanent"
    permanent: PermanentError | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self, reason: str, error: PermanentError | None = None) -> None:
        # A permanent error outranks a budget stop: it is what the user must fix first.
        if self.stop_reason is None or (reason == "permanent" and self.stop_reason != "permanent"):
            self.stop_reason = reason
            self.permanent = error
        self.stopped.set()


class TeacherClient:
    def __init__(
        self,
        backend: TeacherBackend,
        cfg: Any,
        cache: AnswerCache | None = None,
        progress: bool = False,
        rng: random.Random | None = None,
        ledger: SpendLedger | None = None,
    ):
        self.backend = backend
        self.cfg = cfg
        self.cache = cache
        self.ledger = ledger
        self.progress = progress
        self.concurrency = max(1, int(setting(cfg, "concurrency")))
        self.max_retries = max(0, int(setting(cfg, "max_retries")))
        self.backoff_base_s = float(setting(cfg, "backoff_base_s"))
        self.backoff_max_s = float(setting(cfg, "backoff_max_s"))
        self.batch_size = max(1, int(setting(cfg, "batch_size") or 1))
        self.batched = bool(getattr(backend, "batched", backend.name == "hf")) and self.batch_size > 1
        max_cost = setting(cfg, "max_cost_usd")
        self.max_cost_usd: float | None = None if max_cost is None else float(max_cost)
        self.price_in, self.price_out, self.price_known = self._price(backend.model)
        if self.max_cost_usd is not None and not self.price_known:
            raise ConfigError(
                f"teacher.max_cost_usd={self.max_cost_usd:g} is set but teacher.prices has no entry "
                "for model "
                f"'{backend.model}': {price_advice(backend.model)}, or run without a cap: "
                "teacher.max_cost_usd=null"
            )
        rpm = setting(cfg, "requests_per_minute")
        tpm = setting(cfg, "tokens_per_minute")
        # Requests are paced evenly (a bucket of one); tokens may burst up to one second's worth.
        self._rpm = RateLimiter(float(rpm), capacity=1.0) if rpm else None
        self._tpm = RateLimiter(float(tpm)) if tpm else None
        self._rng = rng or random.Random()
        self.usage = Usage()
        self._reserved = 0.0
        self._pause_until = 0.0  # a 429's Retry-After pauses every worker until then
        self._prompt_scale = 1.0  # actual / estimated prompt tokens, the largest seen (>= 1)

    def __repr__(self) -> str:
        return (
            f"TeacherClient(backend={self.backend!r}, concurrency={self.concurrency}, "
            f"max_cost_usd={self.max_cost_usd}, cache={self.cache!r})"
        )

    # -- cost and token estimates ------------------------------------------------------------------
    def _price(self, model: str) -> tuple[float, float, bool]:
        prices = _field(self.cfg, "prices") or {}
        entry = prices.get(model) if hasattr(prices, "get") else None
        if entry is None:
            return 0.0, 0.0, False
        return float(_field(entry, "input_per_1m", 0.0)), float(_field(entry, "output_per_1m", 0.0)), True

    mode = "sync"  # which prices cost() uses: sync, or batch (BatchTeacherClient: sync x price_factor)
    price_factor = 1.0

    def sync_cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        """The cost at ``teacher.prices`` (one HTTP call per request)."""
        return (prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1e6

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        """The cost in this client's mode: sync prices, or batch prices (sync x
        ``teacher.batch.price_factor``)."""
        return self.sync_cost(prompt_tokens, completion_tokens) * self.price_factor

    def estimate_prompt_tokens(self, request: ChatRequest) -> int:
        return sum(self.backend.count_tokens(c) + MESSAGE_OVERHEAD_TOKENS for _, c in request.messages)

    def _worst_tokens(self, request: ChatRequest) -> tuple[int, int]:
        return math.ceil(self.estimate_prompt_tokens(request) * self._prompt_scale), int(request.max_tokens)

    @property
    def spent_usd(self) -> float:
        return self.usage.cost_usd

    def _spent_elsewhere(self) -> float:
        return self.ledger.others_usd() if self.ledger is not None else 0.0

    # -- dry run -----------------------------------------------------------------------------------
    def estimate(self, requests: Iterable[ChatRequest]) -> dict[str, Any]:
        """What ``run`` would send, calling nothing: uncached calls, tokens (completion at its
        ``max_tokens`` ceiling) and the worst-case cost."""
        requests = list(requests)
        keys = [r.cache_key(self.backend.name, self.backend.model) for r in requests]
        cached = self.cache.get_many(keys) if self.cache is not None else {}
        todo: dict[str, ChatRequest] = {}
        for key, request in zip(keys, requests, strict=True):
            if key not in cached:
                todo.setdefault(key, request)
        prompt = sum(self.estimate_prompt_tokens(r) for r in todo.values())
        completion = sum(int(r.max_tokens) for r in todo.values())
        cost = self.cost(prompt, completion)
        return {
            "backend": self.backend.name,
            "model": self.backend.model,
            "requests": len(requests),
            "cached": sum(1 for k in keys if k in cached),
            "duplicates": len(requests) - len(todo) - sum(1 for k in keys if k in cached),
            "calls": len(todo),
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "completion_tokens_basis": "max_tokens",
            "cost_usd": cost,
            "price_mode": self.mode,
            "price_known": self.price_known,
            "max_cost_usd": self.max_cost_usd,
            "spent_before_usd": self._spent_elsewhere(),
            "fits_budget": None
            if self.max_cost_usd is None
            else self._spent_elsewhere() + cost <= self.max_cost_usd,
        }

    # -- accounting --------------------------------------------------------------------------------
    def usage_summary(self) -> dict[str, Any]:
        u = self.usage
        wall = max(u.wall_s, 1e-9)
        return {
            "backend": self.backend.name,
            "model": self.backend.model,
            "requests": u.requests,
            "cached": u.cached,
            "calls": u.calls,
            "answered": u.answered,
            "attempts": u.attempts,
            "retries": u.retries,
            "failed": u.failed,
            "not_sent": u.not_sent,
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "cost_usd": round(u.cost_usd, 6),
            "max_cost_usd": self.max_cost_usd,
            "price_known": self.price_known,
            "wall_s": round(u.wall_s, 3),
            "requests_per_s": round(u.answered / wall, 3) if u.wall_s else 0.0,
            "tokens_per_s": round((u.prompt_tokens + u.completion_tokens) / wall, 1) if u.wall_s else 0.0,
            "concurrency": self.concurrency,
            "batched": self.batched,
        }

    # -- the run -----------------------------------------------------------------------------------
    def _start(self, requests: Iterable[ChatRequest]) -> tuple[list[ChatRequest], list[str], list[Result]]:
        """A run's requests as a list, their cache keys and one empty :class:`Result` each (counted)."""
        requests = list(requests)
        keys = [r.cache_key(self.backend.name, self.backend.model) for r in requests]
        self.usage.requests += len(requests)
        return requests, keys, [Result(i, r, k) for i, (r, k) in enumerate(zip(requests, keys, strict=True))]

    async def run(
        self, requests: Iterable[ChatRequest], on_result: Callable[[Result], Any] | None = None
    ) -> list[Result]:
        """Answer ``requests``; one :class:`Result` each, in request order. ``on_result`` (sync or
        async) sees every result as it is settled (cached ones first), after the cache has it.

        Raises :class:`BudgetExceeded` or :class:`PermanentError` (both carry ``.results``) when the
        run had to stop; failures that retries could not fix are in the results, not raised."""
        t0 = time.monotonic()
        requests, keys, results = self._start(requests)
        model = self.backend.model
        cached = self.cache.get_many(keys) if self.cache is not None else {}
        pending: dict[str, list[int]] = {}
        bar = tqdm(
            total=len(requests),
            unit="req",
            desc=f"teacher {model}",
            dynamic_ncols=True,
            disable=None if self.progress else True,
            leave=False,
        )
        state = _RunState(iter(()), pending, results, on_result, bar)
        try:
            for result in results:
                hit = cached.get(result.key)
                if hit is not None:
                    result.response, result.from_cache = hit.to_response(), True
                    self.usage.cached += 1
                    await self._emit(state, result)
                else:
                    pending.setdefault(result.key, []).append(result.index)
            order = list(pending)
            size = self.batch_size if self.batched else 1
            state.units = iter([order[i : i + size] for i in range(0, len(order), size)])
            n_workers = min(self.concurrency, math.ceil(len(order) / size))
            workers = [asyncio.create_task(self._worker(state)) for _ in range(n_workers)]
            try:
                await asyncio.gather(*workers)
            except BaseException:
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                raise
        finally:
            bar.close()
            self.usage.wall_s += time.monotonic() - t0
        not_sent = sum(1 for r in results if r.status == "not_sent")
        self.usage.not_sent += not_sent
        sent = sum(1 for r in results if r.sent)
        if state.stop_reason == "permanent":
            assert state.permanent is not None
            err = PermanentError(
                f"{state.permanent}. The run stopped: {sent} requests sent, {not_sent} not sent "
                f"(answered calls are cached; fix the cause and rerun)",
                state.permanent.status,
            )
            err.results = results  # type: ignore[attr-defined]
            raise err
        if state.stop_reason == "budget":
            assert self.max_cost_usd is not None
            before = self._spent_elsewhere()
            total = before + self.usage.cost_usd
            where = (
                (
                    f" on the annotation directory in total (${usd(before)} by earlier or parallel "
                    "runs, recorded "
                    f"in {self.ledger.path})"
                )
                if self.ledger is not None
                else ""
            )
            raise BudgetExceeded(
                f"teacher.max_cost_usd={usd(self.max_cost_usd)} reached: ${usd(total)} spent{where}, "
                f"${usd(self.usage.cost_usd)} of it on {self.usage.answered} calls in this run; "
                f"{not_sent} requests "
                f"not sent. Answered calls are cached; to go on, raise the cap, e.g. rerun with "
                f"teacher.max_cost_usd={raised_cap(self.max_cost_usd, total)}",
                spent_usd=total,
                calls=self.usage.answered,
                not_sent=not_sent,
                results=results,
            )
        return results

    async def _emit(self, state: _RunState, result: Result) -> None:
        u = self.usage
        state.bar.update(1)
        if not state.bar.disable:
            state.bar.set_postfix_str(
                f"tok {u.prompt_tokens}+{u.completion_tokens} ${u.cost_usd:.4f} retries {u.retries}",
                refresh=False,
            )
        if state.on_result is not None:
            out = state.on_result(result)
            if inspect.isawaitable(out):
                await out

    async def _worker(self, state: _RunState) -> None:
        while True:
            # A checkpoint before every send: a cancelled run stops here with nothing half-sent.
            await asyncio.sleep(0)
            if state.stopped.is_set():
                return
            unit = next(state.units, None)
            if unit is None:
                return
            requests = [state.results[state.pending[k][0]].request for k in unit]
            worst = [self._worst_tokens(r) for r in requests]
            reserve = sum(self.cost(p, c) for p, c in worst)
            if self.max_cost_usd is not None and (
                self._spent_elsewhere() + self.usage.cost_usd + self._reserved + reserve > self.max_cost_usd
            ):
                state.stop("budget")
                return
            self._reserved += reserve
            try:
                responses, error = await self._call(state, unit, requests, sum(p + c for p, c in worst))
            finally:
                self._reserved -= reserve
            await self._settle(state, unit, requests, responses, error)

    async def _call(
        self, state: _RunState, unit: list[str], requests: list[ChatRequest], tokens: int
    ) -> tuple[list[ChatResponse] | None, TeacherError | None]:
        """Send one unit (a request, or a batch) with retries."""
        firsts = [state.results[state.pending[k][0]] for k in unit]
        failures = 0
        while True:
            pause = self._pause_until - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            if self._rpm is not None:
                await self._rpm.acquire(len(requests))
            if self._tpm is not None:
                await self._tpm.acquire(tokens)
            if state.stop_reason == "permanent":  # stopped while we waited: do not send
                return None, None
            if not firsts[0].sent:
                self.usage.calls += len(unit)
            for r in firsts:
                r.sent = True
                r.attempts += 1
            self.usage.attempts += 1
            try:
                if self.batched:
                    responses = await self.backend.complete_batch(requests)
                    if len(responses) != len(requests):
                        raise TransientError(
                            f"malformed response: {len(responses)} answers for a batch of {len(requests)}"
                        )
                else:
                    responses = [await self.backend.complete(requests[0])]
                return responses, None
            except PermanentError as e:
                log.error("teacher request refused, stopping the run: %s", e)
                state.stop("permanent", e)
                return None, e
            except TransientError as e:
                failures += 1
                if failures > self.max_retries or state.stop_reason == "permanent":
                    log.warning("teacher request failed after %d attempts: %s", failures, e)
                    return None, e
                self.usage.retries += 1
                if e.retry_after is not None:
                    delay = e.retry_after * (1.0 + 0.1 * self._rng.random())
                    self._pause_until = max(self._pause_until, time.monotonic() + e.retry_after)
                else:
                    cap = min(self.backoff_max_s, self.backoff_base_s * 2 ** (failures - 1))
                    delay = cap / 2 + self._rng.uniform(0, cap / 2)
                log.debug("teacher attempt %d failed (%s); retrying in %.2fs", failures, e, delay)
                # Sleep, but wake early if a permanent error stops the run meanwhile.
                try:
                    await asyncio.wait_for(state.stopped.wait(), timeout=delay)
                except TimeoutError:
                    pass
                if state.stop_reason == "permanent":
                    return None, e

    def _account_answer(self, key: str, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        """Count a fresh answer (usage, the spend persisted for the budget, the prompt-size estimate) and
        store it in the cache; returns the answer everyone sees (another shard's, when it answered first).
        Sync calls and batch lines both go through here."""
        u = self.usage
        response.cost_usd = self.cost(response.prompt_tokens, response.completion_tokens)
        response.cached = False
        u.answered += 1
        u.prompt_tokens += response.prompt_tokens
        u.completion_tokens += response.completion_tokens
        u.cost_usd += response.cost_usd
        if self.ledger is not None:  # before the cache: a crash after this line never under-counts
            self.ledger.record(
                calls=u.answered,
                prompt_tokens=u.prompt_tokens,
                completion_tokens=u.completion_tokens,
                cost_usd=u.cost_usd,
            )
        estimate = self.estimate_prompt_tokens(request)
        if estimate and response.prompt_tokens > estimate * self._prompt_scale:
            self._prompt_scale = response.prompt_tokens / estimate
        if self.cache is not None:
            stored = self.cache.put(
                key, request, response, backend=self.backend.name, model=self.backend.model
            )
            if not stored:  # another shard answered it first: use the answer everyone else sees
                first = self.cache.get(key)
                if first is not None:
                    return ChatResponse(
                        **{**vars(first.to_response()), "cached": False, "cost_usd": response.cost_usd}
                    )
        return response

    async def _settle(
        self,
        state: _RunState,
        unit: list[str],
        requests: list[ChatRequest],
        responses: list[ChatResponse] | None,
        error: TeacherError | None,
    ) -> None:
        u = self.usage
        for pos, key in enumerate(unit):
            indices = state.pending[key]
            if responses is not None:
                responses[pos] = self._account_answer(key, requests[pos], responses[pos])
            for n, index in enumerate(indices):
                result = state.results[index]
                if responses is not None:
                    if n == 0:
                        result.response = responses[pos]
                    else:  # the same request twice in one run: sent once, the copy counts as cached
                        result.response = ChatResponse(**{**vars(responses[pos]), "cached": True})
                        result.from_cache = True
                        u.cached += 1
                elif error is not None:
                    result.error = error
                    u.failed += 1
                else:
                    continue  # never sent (the run stopped first)
                await self._emit(state, result)
