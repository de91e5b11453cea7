"""exp3rt-annotate through the real openai client against an OpenAI-compatible server on 127.0.0.1:
repairs of malformed answers, failures kept with their raw text, a killed process resumed without
re-sending answered calls, the budget stop, the dry run, and the API key never written anywhere."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from fake_openai import FakeOpenAI
from hydra import compose, initialize_config_dir

from exp3rt import CONF_DIR
from exp3rt.cli.annotate import run

SECRET = "sk-test-DO-NOT-LEAK-4242"
WORLD = [
    "dataset.world.n_users=20",
    "dataset.world.n_items=16",
    "dataset.world.min_per_user=5",
    "dataset.world.max_per_user=7",
]
PRICES = "+teacher.prices={fake-model: {input_per_1m: 1000.0, output_per_1m: 2000.0}}"


def teacher_answer(body: dict) -> str:
    """A well-behaved teacher, by stage (recognised from the system prompt of conf/prompt)."""
    system = body["messages"][0]["content"]
    last = body["messages"][-1]["content"]
    if "could not be used" in last:  # a repair request: answer properly this time
        return "[Like]\n- Repaired answer\n\n[Dislike]\n- None."
    if "list what the reviewer liked" in system:
        if "NEVERFIX" in last:
            return "I cannot help with that."
        return "[Like]\n- The story\n\n[Dislike]\n- The pacing"
    if "taste in" in system or "what reviewers appreciated" in system:
        return "[Like]\n- Strong stories\n- Good acting\n\n[Dislike]\n- Slow pacing"
    if "explain, step by step" in system:
        return (
            "The user values strong stories and this title delivers one. They dislike slow pacing, which "
            "reviewers mention, but the strengths carry more weight for this viewer overall."
        )
    return "Rating: 3"


@pytest.fixture
def server():
    fake = FakeOpenAI(teacher_answer).start()
    yield fake
    fake.stop()


def overrides(fake: FakeOpenAI, tmp_path: Path, *extra: str) -> list[str]:
    return [
        f"paths.artifacts_dir={tmp_path}/artifacts",
        "progress=false",
        "teacher=gpt35_turbo",
        f"teacher.base_url={fake.base_url}",
        "teacher.model=fake-model",
        "teacher.max_cost_usd=null",
        "teacher.concurrency=4",
        "teacher.backoff_base_s=0.01",
        "teacher.requests_per_minute=null",
        "teacher.tokens_per_minute=null",
        *WORLD,
        *extra,
    ]


def annotate(tmp_path: Path, args: list[str], name: str = "run") -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="annotate", overrides=args)
    return run(cfg, tmp_path / name)


def test_all_stages_over_http_with_repairs_and_recorded_failures(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    # every 7th extraction comes back malformed once (then repaired); a 500 and a 429 on the way
    server.fail_next("500", 1)
    server.fail_next("429", 1, retry_after=0.01)
    seen: dict[str, int] = {}

    def answer(body):
        last = body["messages"][-1]["content"]
        seen[last] = seen.get(last, 0) + 1
        if (
            "list what the reviewer liked" in body["messages"][0]["content"]
            and len(seen) % 7 == 0
            and seen[last] == 1
        ):
            return "Likes: the story. Dislikes: none."
        return teacher_answer(body)

    server.answer = answer
    result = annotate(tmp_path, overrides(server, tmp_path))
    d = Path(result["directory"])
    prefs = pd.read_parquet(d / "extract.parquet")
    assert (prefs["status"] == "ok").all()
    assert (prefs["attempts"] == 2).sum() >= 1  # repaired answers took a second attempt
    assert (prefs["preference_set"] == "[Like]\n- Repaired answer\n\n[Dislike]\n- None.").sum() == (
        prefs["attempts"] == 2
    ).sum()
    rationales = pd.read_parquet(d / "rationale.parquet")
    assert (rationales["status"] == "ok").all() and len(rationales) == len(prefs)
    usage = json.loads((d / "extract.usage.json").read_text())
    assert usage["usage"]["retries"] >= 2 and usage["usage"]["failed"] == 0
    # the key went over the wire, and nowhere else
    assert all(h == f"Bearer {SECRET}" for h in server.auth_headers)
    for path in [*tmp_path.rglob("*")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_unrepairable_answers_are_kept_as_failures_with_raw_text(server, tmp_path, monkeypatch):
    def answer(body):
        if "list what the reviewer liked" in body["messages"][0]["content"]:
            return "I cannot help with that."
        return teacher_answer(body)

    server.answer = answer
    result = annotate(tmp_path, overrides(server, tmp_path, "stage=extract", "teacher.repair_retries=1"))
    d = Path(result["directory"])
    prefs = pd.read_parquet(d / "extract.parquet")
    assert (prefs["status"] == "failed").all()
    assert (prefs["raw"] == "I cannot help with that.").all() and prefs["problem"].str.contains(
        r"\[Like\] section"
    ).all()
    failures = [json.loads(line) for line in (d / "extract.failures.jsonl").read_text().splitlines()]
    assert len(failures) == len(prefs)
    # one first ask + one repair per review, nothing more
    assert server.total == 2 * len(prefs)


def test_dry_run_sends_nothing_and_prices_every_stage(server, tmp_path, capsys):
    result = annotate(tmp_path, overrides(server, tmp_path, "dry_run=true", PRICES))
    assert server.total == 0
    est = result["estimate"]
    assert set(est) == {"extract", "user_profile", "item_profile", "rationale"}
    assert est["extract"]["calls"] > 0 and est["extract"]["cost_usd"] > 0
    assert "Dry run — nothing was sent" in capsys.readouterr().out


def test_budget_stops_the_run_and_a_rerun_sends_only_the_rest(server, tmp_path):
    from exp3rt.teacher.client import BudgetExceeded

    args = overrides(server, tmp_path, "stage=extract", PRICES)
    with pytest.raises(BudgetExceeded, match=r"teacher\.max_cost_usd"):
        annotate(tmp_path, [*args, "teacher.max_cost_usd=1.0"])
    sent_first = server.total
    assert sent_first > 0
    result = annotate(tmp_path, args, "again")
    prefs = pd.read_parquet(Path(result["directory"]) / "extract.parquet")
    assert server.total == len(prefs)  # answered calls were cached: none sent twice
    assert max(server.per_prompt.values()) == 1


def _cli_env(tmp_path: Path) -> dict:
    return {
        **os.environ,
        "OPENAI_API_KEY": SECRET,
        "EXP3RT_OUTPUTS": str(tmp_path / "outputs"),
        "PYTHONPATH": str(CONF_DIR.parent),
    }


def test_killed_process_resumes_without_resending_answered_calls(tmp_path):
    fake = FakeOpenAI(teacher_answer, latency_s=0.03).start()
    try:
        args = [
            sys.executable,
            "-m",
            "exp3rt.cli.annotate",
            *overrides(fake, tmp_path, "stage=extract", "teacher.concurrency=2"),
        ]
        proc = subprocess.Popen(
            args, env=_cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        deadline = time.time() + 120
        while fake.total < 25 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        sent_before = fake.total
        import sqlite3

        db = tmp_path / "artifacts" / "teacher_cache.sqlite"
        with sqlite3.connect(db) as con:
            cached = con.execute("select count(*) from answers").fetchone()[0]
        assert 20 <= cached <= sent_before
        done = subprocess.run(args, env=_cli_env(tmp_path), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        distinct = len(fake.per_prompt)
        # the rerun sent exactly the prompts that had no stored answer at the kill
        assert fake.total - sent_before == distinct - cached
        # only requests in flight at the kill (<= concurrency) were ever sent twice
        assert sum(1 for c in fake.per_prompt.values() if c > 1) <= 2
    finally:
        fake.stop()


def test_dry_run_against_openai_needs_no_key(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    args = [
        f"paths.artifacts_dir={tmp_path}/artifacts",
        "progress=false",
        "teacher=gpt35_turbo",
        "dry_run=true",
        *WORLD,
    ]
    result = annotate(tmp_path, args)
    est = result["estimate"]
    assert est["extract"]["calls"] > 0
    # gpt-3.5-turbo-1106 at $1 / $2 per 1M tokens: the extract cost follows from its token counts
    expected = (est["extract"]["prompt_tokens"] * 1.0 + est["extract"]["completion_tokens"] * 2.0) / 1e6
    assert est["extract"]["cost_usd"] == pytest.approx(expected)
    assert "Dry run — nothing was sent" in capsys.readouterr().out
