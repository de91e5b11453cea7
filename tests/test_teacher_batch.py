"""Issue 18 items 1-3: ``teacher.mode=batch`` through the OpenAI Batch API. Every test runs the openai
teacher (the real ``openai`` client) against the fake server on 127.0.0.1, whose Files and Batch API
(tests/fake_batches.py) count every line they process — so a request paid twice would show."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from fake_openai import FakeOpenAI
from test_annotate_http import SECRET, overrides, teacher_answer
from test_teacher_reliability import annotate

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
    assert usage["mode"] == "batch" and usage["failed"] == 0 and usage["batch_submitted_lines"] == usage["calls"]


def test_a_stage_is_split_into_batches_within_the_line_limit(server, tmp_path):
    result = annotate(tmp_path, overrides(server, tmp_path, "stage=extract", *BATCH, "teacher.batch.max_requests=40"))
    n = len(pd.read_parquet(Path(result["directory"]) / "extract.parquet"))
    assert max(server.batches.created_lines) <= 40
    assert sum(server.batches.created_lines) == n == server.batches.lines_processed
    assert len(server.batches.created) == -(-n // 40)
