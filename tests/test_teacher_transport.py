"""The teacher's transport: OpenAI backend, answer cache and client, against a fake OpenAI server."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from email.utils import formatdate
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI

from exp3rt.config import ConfigError, PriceConf, TeacherConf
from exp3rt.teacher.backends.base import ChatRequest, ChatResponse, PermanentError, TransientError
from exp3rt.teacher.backends.openai_backend import OpenAIBackend, parse_retry_after
from exp3rt.teacher.cache import AnswerCache
from exp3rt.teacher.client import BudgetExceeded, TeacherClient

SECRET = "sk-test-SECRET-a1b2c3d4e5f6g7h8"
MODEL = "gpt-fake"


@pytest.fixture
def fake_openai(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    server = FakeOpenAI().start()
    yield server
    server.stop()


def make_cfg(fake: FakeOpenAI, **over) -> TeacherConf:
    base = dict(
        backend="openai",
        name="fake",
        model=MODEL,
        base_url=fake.base_url,
        concurrency=4,
        max_retries=3,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        timeout_s=5.0,
        prices={MODEL: PriceConf(input_per_1m=1000.0, output_per_1m=2000.0)},
    )
    base.update(over)
    return TeacherConf(**base)


def requests_for(n: int, max_tokens: int = 20, prefix: str = "review") -> list[ChatRequest]:
    return [
        ChatRequest(
            "extract", (("system", "Extract likes."), ("user", f"{prefix} {i}")), "v1", max_tokens=max_tokens
        )
        for i in range(n)
    ]


def run_client(cfg, reqs, cache=None, on_result=None, **kw):
    async def go():
        backend = OpenAIBackend(cfg)
        client = TeacherClient(backend, cfg, cache, **kw)
        try:
            return client, await client.run(reqs, on_result=on_result)
        finally:
            await backend.aclose()

    return asyncio.run(go())


# -- order, cache, resume ----------------------------------------------------------------------------
def test_answers_come_back_in_request_order_with_usage(fake_openai, tmp_path):
    def slow_for_even(body):  # uneven latency so answers arrive out of order
        prompt = body["messages"][-1]["content"]
        time.sleep(0.03 if int(prompt.split()[-1]) % 2 == 0 else 0.0)
        return "echo: " + prompt

    fake_openai.answer = slow_for_even
    reqs = requests_for(12)
    seen = []
    client, results = run_client(
        make_cfg(fake_openai),
        reqs,
        AnswerCache(tmp_path / "c.sqlite"),
        on_result=lambda r: seen.append(r.index),
    )
    assert [r.response.text for r in results] == [f"echo: review {i}" for i in range(12)]
    assert seen != sorted(seen)  # they did arrive out of order
    assert all(r.status == "answered" and r.attempts == 1 for r in results)
    usage = client.usage_summary()
    assert usage["answered"] == usage["calls"] == usage["attempts"] == 12 == fake_openai.total
    assert usage["prompt_tokens"] == sum(r.response.prompt_tokens for r in results) > 0
    assert usage["cost_usd"] == pytest.approx(sum(r.response.cost_usd for r in results))
    assert usage["cost_usd"] == pytest.approx(
        (usage["prompt_tokens"] * 1000 + usage["completion_tokens"] * 2000) / 1e6
    )
    assert results[0].response.finish_reason == "stop"


def test_second_run_is_served_from_cache_and_duplicates_are_sent_once(fake_openai, tmp_path):
    reqs = requests_for(6)
    path = tmp_path / "c.sqlite"
    _, first = run_client(make_cfg(fake_openai), reqs + reqs[:2], AnswerCache(path))
    assert fake_openai.total == 6  # the two repeats were not sent
    assert [r.from_cache for r in first] == [False] * 6 + [True] * 2
    client, second = run_client(make_cfg(fake_openai), reqs, AnswerCache(path))
    assert fake_openai.total == 6
    assert all(r.from_cache and r.response.cached for r in second)
    assert [r.response.text for r in second] == [r.response.text for r in first[:6]]
    assert client.usage_summary()["cached"] == 6 and client.usage_summary()["calls"] == 0
    stats = AnswerCache(path).stats()
    assert stats["entries"] == 6 and stats["by_stage"]["extract"]["entries"] == 6


def test_a_killed_run_resumes_without_resending_anything_answered(fake_openai, tmp_path):
    """Concurrency 1, killed from on_result after K answers: exactly K requests reached the server,
    and the rerun sends exactly the rest."""
    reqs = requests_for(15)
    path = tmp_path / "c.sqlite"
    cfg = make_cfg(fake_openai, concurrency=1)

    async def killed():
        backend = OpenAIBackend(cfg)
        client = TeacherClient(backend, cfg, AnswerCache(path))
        answered = []

        def on_result(r):
            answered.append(r)
            if len(answered) == 5:
                task.cancel()

        task = asyncio.create_task(client.run(reqs, on_result=on_result))
        with pytest.raises(asyncio.CancelledError):
            await task
        await backend.aclose()

    asyncio.run(killed())
    assert fake_openai.total == 5 and AnswerCache(path).stats()["entries"] == 5
    _, results = run_client(cfg, reqs, AnswerCache(path))
    assert fake_openai.total == 15 == len(fake_openai.per_prompt)
    assert max(fake_openai.per_prompt.values()) == 1
    assert sum(r.from_cache for r in results) == 5


def test_a_run_cancelled_with_requests_in_flight_resends_only_unanswered_ones(fake_openai, tmp_path):
    fake_openai.latency_s = 0.02
    reqs = requests_for(20)
    path = tmp_path / "c.sqlite"
    cfg = make_cfg(fake_openai, concurrency=4)

    async def killed():
        backend = OpenAIBackend(cfg)
        client = TeacherClient(backend, cfg, AnswerCache(path))
        enough = asyncio.Event()
        count = 0

        def on_result(r):
            nonlocal count
            count += 1
            if count >= 7:
                enough.set()

        task = asyncio.create_task(client.run(reqs, on_result=on_result))
        await enough.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await backend.aclose()

    asyncio.run(killed())
    cached_prompts = {
        f"review {i}"
        for i, r in enumerate(reqs)
        if AnswerCache(path).get(r.cache_key("openai", MODEL)) is not None
    }
    assert len(cached_prompts) >= 7
    before = fake_openai.total
    run_client(cfg, reqs, AnswerCache(path))
    assert fake_openai.total - before == 20 - len(cached_prompts)  # the rerun sent only the unanswered
    twice = {p for p, n in fake_openai.per_prompt.items() if n > 1}
    assert not twice & cached_prompts  # nothing answered was sent again
    assert len(twice) <= 4  # at most the requests that were in flight when it was killed


# -- retries -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("header", ["seconds", "ms"])
def test_429_is_retried_after_the_servers_retry_after(fake_openai, header):
    if header == "seconds":
        fake_openai.fail_next("429", retry_after=0.25)
    else:
        fake_openai.fail_next("429", retry_after_ms=250)
    client, results = run_client(make_cfg(fake_openai, backoff_base_s=5.0), requests_for(1))
    assert results[0].ok and results[0].attempts == 2
    gap = fake_openai.arrivals[1] - fake_openai.arrivals[0]
    assert 0.25 <= gap < 0.25 * 1.1 + 0.3  # waited what the server asked (not the 5 s backoff)
    assert client.usage_summary()["retries"] == 1


def test_retry_after_parsing():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "150", "retry-after": "9"}) == 0.15
    assert parse_retry_after(
        {"retry-after": formatdate(1000.0 + 30, usegmt=True)}, now=1000.0
    ) == pytest.approx(30)
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_server_errors_and_malformed_answers_are_retried_until_an_answer(fake_openai):
    for kind in ("500", "malformed", "no_choices", "null_content", "503"):
        fake_openai.fail_next(kind)
    client, results = run_client(make_cfg(fake_openai, max_retries=5, concurrency=1), requests_for(1))
    assert results[0].ok and results[0].response.text == "echo: review 0"
    assert results[0].attempts == 6 == fake_openai.total
    assert client.usage_summary()["retries"] == 5


def test_backend_maps_malformed_and_5xx_to_transient(fake_openai):
    async def go():
        backend = OpenAIBackend(make_cfg(fake_openai))
        errors = []
        for kind in ("malformed", "no_choices", "null_content", "500"):
            fake_openai.fail_next(kind)
            with pytest.raises(TransientError) as e:
                await backend.complete(requests_for(1)[0])
            errors.append(e.value)
        await backend.aclose()
        return errors

    errors = asyncio.run(go())
    assert all("malformed response" in str(e) for e in errors[:3])
    assert errors[3].status == 500


def test_exhausted_retries_are_recorded_as_failures_and_the_run_goes_on(fake_openai):
    fake_openai.fail_when = lambda body, n: "500" if body["messages"][-1]["content"] == "review 2" else None
    client, results = run_client(make_cfg(fake_openai, max_retries=2), requests_for(5))
    assert [r.status for r in results] == ["answered", "answered", "failed", "answered", "answered"]
    failed = results[2]
    assert isinstance(failed.error, TransientError) and failed.error.status == 500 and failed.attempts == 3
    assert fake_openai.per_prompt["review 2"] == 3
    assert client.usage_summary()["failed"] == 1


def test_a_timeout_is_transient(fake_openai):
    fake_openai.hang_s = 0.6
    fake_openai.fail_next("hang")
    _, results = run_client(make_cfg(fake_openai, timeout_s=0.2, max_retries=0), requests_for(1))
    assert results[0].status == "failed" and "timed out" in str(results[0].error)


def test_a_rejected_key_stops_the_run_at_once_with_a_sentence(fake_openai):
    fake_openai.fail_when = lambda body, n: "401"
    t0 = time.monotonic()
    with pytest.raises(PermanentError) as e:
        run_client(make_cfg(fake_openai, concurrency=2, max_retries=5), requests_for(30))
    assert time.monotonic() - t0 < 2.0
    assert fake_openai.total <= 2  # what was in flight; nothing after the first 401, no retries
    msg = str(e.value)
    assert "the API key in $OPENAI_API_KEY was rejected" in msg and "not sent" in msg
    assert e.value.status == 401 and SECRET not in msg
    not_sent = [r for r in e.value.results if r.status == "not_sent"]
    assert len(not_sent) == 30 - fake_openai.total


@pytest.mark.parametrize(
    "kind,words", [("404", "not found"), ("400", "rejected the request"), ("403", "may not use")]
)
def test_other_client_errors_are_permanent(fake_openai, kind, words):
    fake_openai.fail_next(kind)
    with pytest.raises(PermanentError, match=words):
        run_client(make_cfg(fake_openai, concurrency=1), requests_for(3))
    assert fake_openai.total == 1


# -- pacing ------------------------------------------------------------------------------------------
def test_concurrency_limit_is_honoured(fake_openai):
    fake_openai.latency_s = 0.04
    run_client(make_cfg(fake_openai, concurrency=3), requests_for(15))
    assert fake_openai.max_in_flight == 3


def test_request_rate_limit_spaces_requests(fake_openai):
    rpm = 1200  # one every 50 ms
    run_client(make_cfg(fake_openai, concurrency=8, requests_per_minute=rpm), requests_for(9))
    arrivals = fake_openai.arrivals
    span = arrivals[-1] - arrivals[0]
    assert span >= 8 * 0.05 * 0.9
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert min(gaps) >= 0.035


def test_token_rate_limit_spaces_requests(fake_openai):
    # ~ 100 + 12 prompt tokens each; 12 of them need 1.7 s of pacing beyond the first second's burst, so a
    # connection set-up of tens of ms on the first arrival cannot hide the pacing (5 requests needed
    # 0.12 s, within that jitter)
    reqs = requests_for(12, max_tokens=100)
    run_client(make_cfg(fake_openai, concurrency=6, tokens_per_minute=60 * 500), reqs)  # 500 tokens/s
    span = fake_openai.arrivals[-1] - fake_openai.arrivals[0]
    assert span >= (12 * 112 - 500) / 500 * 0.8  # the first second's worth passes at once, then paced


# -- budget and dry run ------------------------------------------------------------------------------
def test_budget_stops_before_it_is_exceeded_and_reports_what_was_not_sent(fake_openai, tmp_path):
    fake_openai.latency_s = 0.005
    cfg = make_cfg(fake_openai, max_cost_usd=0.5, concurrency=3)
    reqs = requests_for(40)  # worst case ~ (12 + 20) tokens; actual ~ (12 + 4): ~0.02 USD worst, ~0.02 real
    path = tmp_path / "c.sqlite"
    with pytest.raises(BudgetExceeded) as e:
        run_client(cfg, reqs, AnswerCache(path))
    err = e.value
    assert err.spent_usd <= 0.5
    assert err.calls == fake_openai.total > 0
    assert err.not_sent == 40 - fake_openai.total > 0
    assert sum(r.status == "not_sent" for r in err.results) == err.not_sent
    assert str(err) == (
        f"teacher.max_cost_usd=0.50 reached: ${err.spent_usd:.2f} spent, ${err.spent_usd:.2f} of it on "
        f"{err.calls} calls in this run; {err.not_sent} requests not sent. Answered calls are cached; "
        f"to go on, raise the cap, e.g. rerun with teacher.max_cost_usd=1"
    )
    # the rerun with a higher budget sends exactly what was not sent
    before = fake_openai.total
    client, results = run_client(make_cfg(fake_openai, max_cost_usd=5.0), reqs, AnswerCache(path))
    assert fake_openai.total - before == err.not_sent and all(r.ok for r in results)
    assert max(fake_openai.per_prompt.values()) == 1


def test_budget_needs_a_price_for_the_model(fake_openai):
    with pytest.raises(ConfigError, match=r"teacher\.prices"):
        run_client(make_cfg(fake_openai, max_cost_usd=1.0, prices={}), requests_for(1))
    assert fake_openai.total == 0


def test_dry_run_estimate_calls_nothing(fake_openai, tmp_path):
    path = tmp_path / "c.sqlite"
    reqs = requests_for(10)
    run_client(make_cfg(fake_openai), reqs[:4], AnswerCache(path))
    fake_openai.reset_counts()

    async def go():
        cfg = make_cfg(fake_openai, max_cost_usd=0.1)
        backend = OpenAIBackend(cfg)
        est = TeacherClient(backend, cfg, AnswerCache(path)).estimate(reqs)
        await backend.aclose()
        return est

    est = asyncio.run(go())
    assert fake_openai.total == 0
    assert est["calls"] == 6 and est["cached"] == 4
    assert est["completion_tokens"] == 6 * 20
    assert est["cost_usd"] == pytest.approx((est["prompt_tokens"] * 1000 + 120 * 2000) / 1e6)
    assert est["fits_budget"] is False


# -- secrets -----------------------------------------------------------------------------------------
def test_the_api_key_never_leaks(fake_openai, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "c.sqlite"
    cfg = make_cfg(fake_openai)
    fake_openai.fail_next("500")
    fake_openai.fail_next("429", retry_after=0.01)

    async def go():
        backend = OpenAIBackend(cfg)
        cache = AnswerCache(path)
        client = TeacherClient(backend, cfg, cache)
        await client.run(requests_for(5))
        fake_openai.fail_when = lambda body, n: "401"  # its message echoes the key
        with pytest.raises(PermanentError) as e:
            await client.run(requests_for(3, prefix="other"))
        logging.getLogger("test").error("run failed: %s", e.value)
        texts = [
            repr(backend),
            repr(client),
            repr(cache),
            str(e.value),
            repr(e.value),
            str(client.usage_summary()),
        ]
        await backend.aclose()
        cache.close()
        return texts

    texts = asyncio.run(go())
    assert any(SECRET in h for h in fake_openai.auth_headers)  # the key was really used
    assert "Incorrect API key provided: ***" in texts[3]
    for text in texts:
        assert SECRET not in text
    assert SECRET not in caplog.text
    for file in tmp_path.iterdir():  # the db and any -wal / -shm beside it
        assert SECRET.encode() not in file.read_bytes()


def test_a_missing_key_is_a_config_error_naming_the_variable(monkeypatch):
    monkeypatch.delenv("MY_TEACHER_KEY", raising=False)
    cfg = TeacherConf(backend="openai", model=MODEL, api_key_env="MY_TEACHER_KEY")
    with pytest.raises(ConfigError, match=r"\$MY_TEACHER_KEY"):
        OpenAIBackend(cfg)
    local = TeacherConf(
        backend="openai", model=MODEL, api_key_env="MY_TEACHER_KEY", base_url="http://127.0.0.1:8000/v1"
    )
    assert "127.0.0.1" in repr(OpenAIBackend(local))  # a local server needs no key


# -- batches and the cache across processes ----------------------------------------------------------
class BatchBackend:
    """An in-process backend (like hf): answers whole batches."""

    name = "hf"
    model = "tiny"

    def __init__(self):
        self.batches: list[int] = []

    async def complete(self, request):
        raise AssertionError("the client should batch")

    async def complete_batch(self, requests):
        self.batches.append(len(requests))
        return [
            ChatResponse(text=r.messages[-1][1].upper(), prompt_tokens=5, completion_tokens=2)
            for r in requests
        ]

    def count_tokens(self, text):
        return len(text.split())

    async def aclose(self):
        pass


def test_in_process_backends_get_batches(tmp_path):
    backend = BatchBackend()
    cfg = TeacherConf(backend="hf", model="tiny", batch_size=4, concurrency=1)
    reqs = requests_for(10)
    client = TeacherClient(backend, cfg, AnswerCache(tmp_path / "c.sqlite"))
    results = asyncio.run(client.run(reqs))
    assert backend.batches == [4, 4, 2]
    assert [r.response.text for r in results] == [f"REVIEW {i}" for i in range(10)]
    asyncio.run(client.run(reqs))
    assert backend.batches == [4, 4, 2]  # all cached


WRITER = (
    """
import sys
from exp3rt.teacher.backends.base import ChatRequest, ChatResponse
from exp3rt.teacher.cache import AnswerCache
cache = AnswerCache(sys.argv[1])
for i in range(150):
    r = ChatRequest("extract", (("user", f"{sys.argv[2]} {i}"),), "v1")
    cache.put(r.cache_key("openai", "m"), r, ChatResponse(text="x", prompt_tokens=1), """
    """backend="openai", model="m")
"""
)


def test_several_processes_can_write_one_cache(tmp_path):
    path = tmp_path / "shared.sqlite"
    root = str(Path(__file__).resolve().parents[1])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), f"shard{k}"], cwd=root, env={"PYTHONPATH": root}
        )
        for k in range(3)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    assert AnswerCache(path).stats()["entries"] == 450


def test_when_another_shard_answered_first_its_answer_is_used(fake_openai, tmp_path):
    path = tmp_path / "c.sqlite"
    other = AnswerCache(path)  # another process's connection to the same file
    req = requests_for(1)[0]

    def answer_after_the_other_shard(body):
        other.put(
            req.cache_key("openai", MODEL),
            req,
            ChatResponse(text="theirs", prompt_tokens=1),
            backend="openai",
            model=MODEL,
        )
        return "ours"

    fake_openai.answer = answer_after_the_other_shard
    seen = []

    async def on_result(r):  # async callbacks are awaited
        seen.append(r.response.text)

    _, results = run_client(make_cfg(fake_openai), [req], AnswerCache(path), on_result=on_result)
    assert results[0].response.text == "theirs" == seen[0] and not results[0].from_cache


def test_a_partial_client_config_takes_the_schemas_defaults():
    from exp3rt.config import TeacherConf
    from exp3rt.teacher.backends.extractive import ExtractiveBackend

    schema = TeacherConf()
    for cfg in ({}, None):
        client = TeacherClient(ExtractiveBackend(schema), cfg)
        assert (client.concurrency, client.max_retries) == (schema.concurrency, schema.max_retries) == (8, 6)
        assert (client.backoff_base_s, client.backoff_max_s) == (schema.backoff_base_s, schema.backoff_max_s)
    assert TeacherClient(ExtractiveBackend(schema), {"concurrency": 2}).concurrency == 2
