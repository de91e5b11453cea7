"""Issue 18 items 1-3: ``teacher.mode=batch`` through the OpenAI Batch API. Every test runs the openai
teacher (the real ``openai`` client) against the fake server on 127.0.0.1, whose Files and Batch API
(tests/fake_batches.py) count every line they process — so a request paid twice would show."""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from fake_openai import FakeOpenAI
from hydra import compose, initialize_config_dir
from test_annotate_http import PRICES, SECRET, overrides, teacher_answer
from test_teacher_reliability import annotate, cli, cli_env, is_extract

from exp3rt import CONF_DIR
from exp3rt.teacher.batch import BATCH_FILE
from exp3rt.teacher.stages import STAGE_ORDER

BATCH = ["teacher.mode=batch", "teacher.batch.poll_initial_s=0.01", "teacher.batch.poll_max_s=0.05"]


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    fake = FakeOpenAI(teacher_answer).start()
    yield fake
    fake.stop()


def ledger_rows(directory: Path) -> list[dict]:
    with sqlite3.connect(directory / BATCH_FILE) as con:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT * FROM batches ORDER BY rowid")]


def statuses(directory: Path, stage: str) -> dict:
    return pd.read_parquet(directory / f"{stage}.parquet")["status"].value_counts().to_dict()


def test_batch_mode_matches_sync_mode_and_processes_every_request_once(server, tmp_path):
    sync = annotate(tmp_path / "sync", overrides(server, tmp_path / "sync"))
    sync_calls = server.total
    assert server.batches.lines_processed == 0
    server.reset_counts()
    result = annotate(tmp_path / "batch", overrides(server, tmp_path / "batch", *BATCH))
    assert server.total == 0  # not one chat call: everything went through batches
    d_sync, d_batch = Path(sync["directory"]), Path(result["directory"])
    for stage in STAGE_ORDER:
        assert statuses(d_batch, stage) == statuses(d_sync, stage)
    # every request once, the same requests sync mode sent
    assert server.batches.lines_processed == sync_calls
    assert max(server.batches.per_custom_id.values()) == 1
    rows = ledger_rows(d_batch)
    assert len(rows) == len(server.batches.created) >= len(STAGE_ORDER)  # a stage needs the one before
    assert all(r["collected"] == 1 and r["status"] == "completed" for r in rows)
    assert sum(r["answered"] for r in rows) == sync_calls
    usage = json.loads((d_batch / "extract.usage.json").read_text())["usage"]
    assert (
        usage["mode"] == "batch" and usage["failed"] == 0 and usage["batch_submitted_lines"] == usage["calls"]
    )


def test_a_stage_is_split_into_batches_within_the_limits_and_polls_are_logged(server, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="exp3rt.teacher.batch")
    result = annotate(
        tmp_path, overrides(server, tmp_path, "stage=extract", *BATCH, "teacher.batch.max_requests=40")
    )
    n = len(pd.read_parquet(Path(result["directory"]) / "extract.parquet"))
    assert max(server.batches.created_lines) <= 40
    assert sum(server.batches.created_lines) == n == server.batches.lines_processed
    assert len(server.batches.created) == -(-n // 40)
    for batch_id, lines in zip(server.batches.created, server.batches.created_lines, strict=True):
        assert (
            f"teacher batch {batch_id} (stage extract): completed, {lines} of {lines} requests done, 0 failed"
            in caplog.text
        )
    # a byte limit splits too: every uploaded input file stays within it
    server.batches.__init__(server)
    args = overrides(server, tmp_path / "bytes", "stage=extract", *BATCH, "teacher.batch.max_bytes=20000")
    annotate(tmp_path / "bytes", args)
    sizes = [
        len(server.batches.files[server.batches.batches[b]["input_file_id"]][0])
        for b in server.batches.created
    ]
    assert len(sizes) > 1 and max(sizes) <= 20000
    assert sum(server.batches.created_lines) == n == server.batches.lines_processed


def test_batch_mode_needs_the_openai_backend(tmp_path):
    proc = cli([f"paths.artifacts_dir={tmp_path}/artifacts", "teacher.mode=batch"], tmp_path)
    assert proc.returncode == 2
    assert "teacher.mode=batch uses the OpenAI Batch API, so it needs teacher.backend=openai" in proc.stderr


# ---------------------------------------------------------------- (b) a kill while a batch is pending


def test_a_rerun_after_a_kill_resumes_the_pending_batch_and_pays_nothing_twice(server, tmp_path):
    server.batches.complete_after_polls = 10**9  # the batch stays in progress until the test says so
    args = overrides(server, tmp_path, "stage=extract", *BATCH)
    proc = subprocess.Popen(
        [sys.executable, "-m", "exp3rt.cli.annotate", *args],
        env=cli_env(tmp_path),
        cwd=CONF_DIR.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 120
        while (
            time.time() < deadline
            and proc.poll() is None
            and not (server.batches.created and server.batches.polls[server.batches.created[0]] >= 2)
        ):
            time.sleep(0.02)
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(server.batches.created) == 1 and server.batches.lines_processed == 0
    directory = next((tmp_path / "artifacts" / "annotations").glob("*/*"))
    [row] = ledger_rows(directory)  # persisted before the first poll
    assert row["id"] == server.batches.created[0] and row["collected"] == 0
    server.batches.complete_after_polls = 0  # done at its next poll
    result = annotate(tmp_path, args)
    n = len(pd.read_parquet(Path(result["directory"]) / "extract.parquet"))
    assert len(server.batches.created) == 1  # resumed, not submitted again
    assert server.batches.lines_processed == n == row["requests"]
    assert max(server.batches.per_custom_id.values()) == 1
    assert server.total == 0
    usage = json.loads((directory / "extract.usage.json").read_text())["usage"]
    assert usage["batch_resumed_batches"] == 1 and usage["batch_submitted_lines"] == 0
    [row] = ledger_rows(directory)
    assert row["collected"] == 1 and row["answered"] == n


# ---------------------------------------------------------------- (c) failed lines, (d) expiry, (e) malformed


def pick(first: int, count: int):
    """A chooser of extraction lines by the order their custom_ids are first seen: the ones in
    [first, first+count)."""
    order: dict[str, int] = {}

    def chosen(body: dict, cid: str) -> bool:
        if not is_extract(body):
            return False
        order.setdefault(cid, len(order))
        return first <= order[cid] < first + count

    return chosen


def test_failed_lines_go_to_a_follow_up_batch_then_are_recorded_as_failures(server, tmp_path):
    always, once = pick(0, 3), pick(3, 3)
    server.batches.fail_line = lambda body, cid, n: (
        "error_file" if always(body, cid) else "500" if once(body, cid) and n == 1 else None
    )
    result = annotate(
        tmp_path, overrides(server, tmp_path, "stage=extract", *BATCH, "teacher.batch.max_failed_rounds=2")
    )
    d = Path(result["directory"])
    prefs = pd.read_parquet(d / "extract.parquet")
    n = len(prefs)
    # the first batch, a follow-up with the 6 failed lines, a last one with the 3 that failed again
    assert server.batches.created_lines == [n, 6, 3]
    assert server.batches.lines_processed == n + 6 + 3
    assert (prefs["status"] == "failed").sum() == 3 and (prefs["status"] == "ok").sum() == n - 3
    failures = [json.loads(x) for x in (d / "extract.failures.jsonl").read_text().splitlines()]
    assert len(failures) == 3
    assert all(
        "injected line failure" in f["problem"] and "asked in 3 batches" in f["problem"] for f in failures
    )
    usage = json.loads((d / "extract.usage.json").read_text())["usage"]
    assert usage["failed"] == 3 and usage["batch_failed_lines"] == 3 * 3 + 3


@pytest.mark.parametrize("end", ["expired", "cancelled"])
def test_an_expired_batch_resubmits_only_the_requests_without_an_answer(server, tmp_path, end):
    server.batches.expire_next, server.batches.expire_keep, server.batches.expire_as = 1, 10, end
    result = annotate(tmp_path, overrides(server, tmp_path, "stage=extract", *BATCH))
    d = Path(result["directory"])
    prefs = pd.read_parquet(d / "extract.parquet")
    n = len(prefs)
    assert server.batches.created_lines == [n, n - 10]
    assert server.batches.lines_processed == n and max(server.batches.per_custom_id.values()) == 1
    assert (prefs["status"] == "ok").all()
    assert [r["status"] for r in ledger_rows(d)] == [end, "completed"]
    assert [r["unanswered"] for r in ledger_rows(d)] == [n - 10, 0]


def test_malformed_output_lines_are_counted_failures_not_crashes(server, tmp_path):
    always, once = pick(0, 1), pick(1, 3)
    server.batches.malformed_line = lambda body, cid, n: always(body, cid) or (once(body, cid) and n == 1)
    result = annotate(
        tmp_path, overrides(server, tmp_path, "stage=extract", *BATCH, "teacher.batch.max_failed_rounds=1")
    )
    d = Path(result["directory"])
    prefs = pd.read_parquet(d / "extract.parquet")
    n = len(prefs)
    assert server.batches.created_lines == [n, 4]
    assert server.batches.lines_processed == n + 4
    assert (prefs["status"] == "failed").sum() == 1
    [failure] = [json.loads(x) for x in (d / "extract.failures.jsonl").read_text().splitlines()]
    assert "no readable line" in failure["problem"]
    usage = json.loads((d / "extract.usage.json").read_text())["usage"]
    assert usage["batch_malformed_lines"] == 4 + 1 and usage["failed"] == 1
    assert [r["malformed"] for r in ledger_rows(d)] == [4, 1]


# ---------------------------------------------------------------- (f) budget, dry run


def test_dry_run_prices_both_modes_and_batch_mode_budgets_at_batch_prices(server, tmp_path, capsys):
    est = annotate(tmp_path, overrides(server, tmp_path, "stage=extract", "dry_run=true", PRICES, *BATCH))[
        "estimate"
    ]
    e = est["extract"]
    assert e["price_mode"] == "batch" and e["cost_usd"] == pytest.approx(e["cost_usd_batch"])
    assert e["cost_usd_batch"] == pytest.approx(0.5 * e["cost_usd_sync"]) and e["cost_usd_sync"] > 0
    out = capsys.readouterr().out
    assert (
        "teacher.mode=batch; the budget check uses batch prices" in out
        and "max cost USD batch (within 24 h)" in out
    )
    assert server.total == 0 and not server.batches.created


def test_a_cap_reached_before_the_next_batch_stops_and_submits_nothing_more(server, tmp_path):
    from exp3rt.teacher.client import BudgetExceeded

    args = overrides(server, tmp_path, "stage=extract", PRICES, *BATCH, "teacher.batch.max_requests=10")
    est = annotate(tmp_path, [*args, "dry_run=true"], "dry")["estimate"]["extract"]
    per_batch = est["cost_usd"] / est["calls"] * 10  # worst case of one full batch, at batch prices
    cap = 3.5 * per_batch
    with pytest.raises(BudgetExceeded) as stop:
        annotate(tmp_path, [*args, f"teacher.max_cost_usd={cap}"])
    message = str(stop.value)
    assert "reached before submitting the next batch" in message and "price_factor=0.5" in message
    assert len(server.batches.created) == 3  # a fourth could have passed the cap
    assert server.batches.lines_processed == 30 == sum(server.batches.created_lines)
    suggestion = message.rsplit("rerun with ", 1)[1]
    assert suggestion.startswith("teacher.max_cost_usd=")
    result = annotate(tmp_path, [*args, "teacher.max_cost_usd=null"], "again")
    n = len(pd.read_parquet(Path(result["directory"]) / "extract.parquet"))
    assert server.batches.lines_processed == n and max(server.batches.per_custom_id.values()) == 1


# ---------------------------------------------------------------- (g) submit_only, then collect


def test_submit_only_submits_and_exits_and_a_later_run_collects(server, tmp_path, capsys):
    args = overrides(server, tmp_path, *BATCH)
    first = annotate(tmp_path, [*args, "teacher.batch.submit_only=true"])
    d = Path(first["directory"])
    assert len(server.batches.created) == 1 and server.batches.lines_processed == 0
    pending = first["batch_pending"]
    assert (
        pending["batch_ids"] == server.batches.created
        and pending["requests"] == server.batches.created_lines[0]
    )
    out = capsys.readouterr().out
    assert "submitted 1 batch(es)" in out and "A later run collects them" in out
    assert not (d / "extract.parquet").exists()
    # with submit_only again: one look collects the finished batch, then the next stage is submitted
    second = annotate(tmp_path, [*args, "teacher.batch.submit_only=true"], "second")
    assert statuses(d, "extract").get("ok", 0) > 0 and not (d / "user_profile.parquet").exists()
    assert (
        len(server.batches.created) == 2
        and second["batch_pending"]["batch_ids"] == server.batches.created[1:]
    )
    assert server.batches.lines_processed == server.batches.created_lines[0]
    result = annotate(tmp_path, args, "collect")
    assert "batch_pending" not in result
    for stage in STAGE_ORDER:
        assert (statuses(d, stage).get("ok", 0)) > 0
    assert (
        server.batches.created[0] == pending["batch_ids"][0]
        and server.batches.polls[pending["batch_ids"][0]] == 1
    )
    assert server.batches.lines_processed == sum(server.batches.created_lines)
    assert max(server.batches.per_custom_id.values()) == 1 and server.total == 0
    # the key went over the wire and into no file
    assert server.auth_headers and all(h == f"Bearer {SECRET}" for h in server.auth_headers)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


# ---------------------------------------------------------------- a create whose answer was lost


def test_a_create_whose_answer_was_lost_is_found_not_submitted_twice(server, tmp_path):
    server.batches.create_error_next = 1  # the batch is made, the client sees a 500
    args = overrides(server, tmp_path, "stage=extract", *BATCH)
    result = annotate(tmp_path, args)
    n = len(pd.read_parquet(Path(result["directory"]) / "extract.parquet"))
    assert (
        len(server.batches.created) == 1 and server.batches.lists == 1
    )  # looked it up instead of creating again
    assert server.batches.lines_processed == n and max(server.batches.per_custom_id.values()) == 1


def test_a_run_that_dies_around_the_create_is_resumed_by_its_input_file(server, tmp_path):
    from exp3rt.teacher.backends.base import TransientError

    server.batches.create_error_next, server.batches.list_fail_next = 1, 1  # and the look-up fails too
    args = overrides(server, tmp_path, "stage=extract", *BATCH, "teacher.max_retries=0")
    with pytest.raises(
        TransientError, match="Rerun the same command: it looks for the batch made from file-"
    ):
        annotate(tmp_path, args)
    directory = next((tmp_path / "artifacts" / "annotations").glob("*/*"))
    [row] = ledger_rows(directory)
    assert row["id"].startswith("submitting:") and len(server.batches.created) == 1
    result = annotate(tmp_path, args, "again")
    n = len(pd.read_parquet(Path(result["directory"]) / "extract.parquet"))
    assert len(server.batches.created) == 1  # found by its input file, resumed
    assert server.batches.lines_processed == n and max(server.batches.per_custom_id.values()) == 1
    [row] = ledger_rows(directory)
    assert row["id"] == server.batches.created[0] and row["collected"] == 1


def test_a_recorded_batch_the_server_does_not_know_stops_with_a_sentence(server, tmp_path):
    from exp3rt.teacher.backends.base import PermanentError

    args = overrides(server, tmp_path, "stage=extract", *BATCH)
    annotate(tmp_path, [*args, "teacher.batch.submit_only=true"])
    [batch_id] = server.batches.created
    server.batches.batches.clear()  # as if the run pointed at another account or server
    with pytest.raises(
        PermanentError, match=f"checking batch {batch_id}: .* does not know it \\(HTTP 404\\)"
    ):
        annotate(tmp_path, args, "again")
    assert (
        len(server.batches.created) == 1 and server.batches.lines_processed == 0
    )  # nothing submitted instead


def test_the_pipeline_stops_after_annotate_while_batches_are_pending(server, tmp_path):
    from exp3rt.pipeline import run_pipeline
    from exp3rt.teacher.batch import BatchPending

    args = [*overrides(server, tmp_path, *BATCH, "teacher.batch.submit_only=true"), "stages=[annotate,train]"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="pipeline", overrides=args)
    with pytest.raises(BatchPending, match="The pipeline stops after its annotate stage"):
        run_pipeline(cfg, tmp_path / "pipe")
    assert len(server.batches.created) == 1 and server.batches.lines_processed == 0
    record = (
        json.loads((tmp_path / "pipe" / "pipeline.json").read_text())
        if (tmp_path / "pipe" / "pipeline.json").is_file()
        else {}
    )
    assert "annotate" not in record.get("stages", {}) and "train" not in record.get("stages", {})


def test_submit_only_from_the_command_line_exits_0_and_says_what_was_submitted(server, tmp_path):
    proc = cli(
        overrides(server, tmp_path, "stage=extract", *BATCH, "teacher.batch.submit_only=true"), tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    [batch_id] = server.batches.created
    assert f"submitted 1 batch(es) with {server.batches.created_lines[0]} requests" in proc.stdout
    assert batch_id in proc.stdout and "A later run collects them" in proc.stdout
    assert server.batches.lines_processed == 0 and server.total == 0


def test_a_badly_formatted_answer_is_repaired_through_the_next_batch(server, tmp_path):
    bad = pick(0, 5)

    def answer(body):
        if (
            bad(body, body["messages"][-1]["content"])
            and "could not be used" not in body["messages"][-1]["content"]
        ):
            return "Likes: the story. Dislikes: none."
        return teacher_answer(body)

    server.answer = answer
    result = annotate(tmp_path, overrides(server, tmp_path, "stage=extract", *BATCH))
    prefs = pd.read_parquet(Path(result["directory"]) / "extract.parquet")
    n = len(prefs)
    assert server.batches.created_lines == [n, 5]  # the repairs went out as one follow-up batch
    assert server.batches.lines_processed == n + 5 and max(server.batches.per_custom_id.values()) == 1
    assert (prefs["status"] == "ok").all() and (prefs["attempts"] == 2).sum() == 5
