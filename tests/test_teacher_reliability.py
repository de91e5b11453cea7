"""Issue 16's teacher items: a crash, a rerun, a second process or a bad answer never loses work, pays
twice or hides a failure. Every test talks to the fault-injecting OpenAI-compatible server on 127.0.0.1
(tests/fake_openai.py) through the real ``openai`` client."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from fake_openai import FakeOpenAI
from hydra import compose, initialize_config_dir
from test_annotate_http import PRICES, SECRET, overrides, teacher_answer

from exp3rt import CONF_DIR
from exp3rt.cli.annotate import run


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    fake = FakeOpenAI(teacher_answer).start()
    yield fake
    fake.stop()


def compose_annotate(args: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="annotate", overrides=args)


def annotate(tmp_path: Path, args: list[str], name: str = "run") -> dict:
    return run(compose_annotate(args), tmp_path / name)


def cli_env(tmp_path: Path) -> dict:
    return {
        **os.environ,
        "OPENAI_API_KEY": SECRET,
        "EXP3RT_OUTPUTS": str(tmp_path / "outputs"),
        "PYTHONPATH": str(CONF_DIR.parent),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def cli(args: list[str], tmp_path: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "exp3rt.cli.annotate", *args],
        env=cli_env(tmp_path),
        cwd=CONF_DIR.parent,
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )


def is_extract(body: dict) -> bool:
    return "list what the reviewer liked" in body["messages"][0]["content"]


# --------------------------------------------------------------- item 9: bodies and exit status


@pytest.mark.parametrize("kind", ["html_502", "html_200"])
def test_an_html_error_page_is_kept_in_the_failure_record(server, tmp_path, kind):
    server.fail_when = lambda body, n: kind if n == 1 else None
    result = annotate(
        tmp_path,
        overrides(server, tmp_path, "stage=extract", "teacher.max_retries=0", "teacher.concurrency=1"),
    )
    d = Path(result["directory"])
    failures = [json.loads(line) for line in (d / "extract.failures.jsonl").read_text().splitlines()]
    assert len(failures) == 1
    record = failures[0]
    assert "502 Bad Gateway" in record["problem"] and "nginx/1.25.3 upstream timed out" in record["raw"]
    assert "no choices" not in record["problem"]
    assert len(record["raw"]) <= 500


def test_a_clean_failure_exits_with_status_2_as_documented(tmp_path):
    proc = cli([f"paths.artifacts_dir={tmp_path}/artifacts", "stage=bogus"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: config key 'stage': 'bogus' is not one of" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------- item 7: the budget holds per directory


def paid_usd(tmp_path: Path) -> float:
    """What the server was paid: every answered request is in the answer cache once, with its cost."""
    import sqlite3

    with sqlite3.connect(tmp_path / "artifacts" / "teacher_cache.sqlite") as con:
        return float(con.execute("select sum(cost_usd) from answers").fetchone()[0] or 0.0)


def test_the_budget_holds_for_the_directory_across_reruns_and_its_advice_pastes(server, tmp_path):
    import re

    from exp3rt.teacher.client import BudgetExceeded

    args = overrides(server, tmp_path, "stage=extract", PRICES, "teacher.max_cost_usd=1.0")
    stops = []
    for i in range(8):  # the same command again and again: each used to spend up to the cap anew
        with pytest.raises(BudgetExceeded) as stop:
            annotate(tmp_path, args, f"run{i}")
        stops.append(stop.value)
    assert 0 < paid_usd(tmp_path) <= 1.0
    assert max(server.per_prompt.values()) == 1
    sent = server.total
    last = stops[-1]
    assert last.spent_usd == pytest.approx(paid_usd(tmp_path))
    message = str(last)
    assert f"${paid_usd(tmp_path):.2f} spent on the annotation directory in total" in message
    assert "teacher_spend.sqlite" in message
    # the stop names the key that raises the cap; pasted as it is, it composes and the run goes on
    suggestion = re.search(r"rerun with (teacher\.max_cost_usd=\S+)$", message).group(1)
    assert suggestion == "teacher.max_cost_usd=2"
    with pytest.raises(BudgetExceeded):  # $2 in total is still not enough for every review
        annotate(tmp_path, [*args, suggestion], "more")
    assert server.total > sent and paid_usd(tmp_path) <= 2.0
    assert max(server.per_prompt.values()) == 1  # nothing was paid for twice
    result = annotate(tmp_path, [*args, "teacher.max_cost_usd=null"], "rest")
    assert max(server.per_prompt.values()) == 1
    assert result["spent_total"]["calls"] == server.total
    assert result["spent_total"]["cost_usd"] == pytest.approx(paid_usd(tmp_path))


@pytest.mark.parametrize("model", ["gpt-4.1-nano", "meta-llama/Llama-3.1-8B-Instruct"])
def test_the_missing_price_advice_composes_when_pasted(server, tmp_path, model):
    import re

    from exp3rt.config import ConfigError

    args = [*overrides(server, tmp_path, "dry_run=true", "teacher.max_cost_usd=5"), f"teacher.model={model}"]
    with pytest.raises(ConfigError) as err:
        annotate(tmp_path, args)
    message = str(err.value)
    suggestion = re.search(r"the override (\+teacher\.prices=\{.*\}\}) ", message).group(1)
    result = annotate(tmp_path, [*args, suggestion])  # accepted by Hydra, and the model now has a price
    assert result["estimate"]["extract"]["cost_usd"] > 0
    # the other way out works too
    assert annotate(tmp_path, [*args, "teacher.max_cost_usd=null"], "b")["estimate"]["extract"]["calls"] > 0


def test_a_model_name_no_override_can_hold_gets_a_yaml_line(tmp_path):
    import yaml

    from exp3rt.teacher.client import price_advice

    advice = price_advice("llama3:8b")
    line = advice.split("as the line  ")[1].split(" (USD")[0]
    assert yaml.safe_load(f"prices:\n  {line}\n") == {
        "prices": {"llama3:8b": {"input_per_1m": 1.0, "output_per_1m": 2.0}}
    }


# --------------------------------------------------------------- item 8: one process per directory


def test_two_processes_on_one_directory_send_each_request_once(tmp_path):
    import time

    fake = FakeOpenAI(teacher_answer, latency_s=0.08).start()
    try:

        def start(name: str, *extra: str) -> subprocess.Popen:
            args = [
                *overrides(fake, tmp_path, "teacher.concurrency=2", *extra),
                f"hydra.run.dir={tmp_path / name}",
            ]
            return subprocess.Popen(
                [sys.executable, "-m", "exp3rt.cli.annotate", *args],
                env=cli_env(tmp_path),
                cwd=CONF_DIR.parent,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )

        first = start("first")
        deadline = time.time() + 120
        while fake.total < 5 and time.time() < deadline and first.poll() is None:
            time.sleep(0.01)
        assert first.poll() is None, first.stdout.read()[-2000:]
        second = start("second")
        refused = cli(
            [*overrides(fake, tmp_path, "lock_wait=false"), f"hydra.run.dir={tmp_path / 'third'}"], tmp_path
        )
        assert first.poll() is None  # the first still held the lock while the third was refused
        out_first, _ = first.communicate(timeout=300)
        out_second, _ = second.communicate(timeout=300)
        assert first.returncode == 0, out_first[-3000:]
        assert second.returncode == 0, out_second[-3000:]
        assert fake.total == len(fake.per_prompt)  # not one request was sent twice
        # the second waited for the first, said whom for, then found every stage finished
        assert f"waiting for pid {first.pid} on" in out_second
        assert out_second.count("skipped (exists)") == 4
        # lock_wait=false: a clean stop naming the holder, with a way out that works
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert f"annotate.lock is held by pid {first.pid} on" in refused.stderr
        assert "rerun with lock_wait=true to wait for it" in refused.stderr
    finally:
        fake.stop()


def test_shards_lock_separately_and_run_in_parallel(tmp_path):
    from exp3rt.locks import LockHeld, file_lock

    d = tmp_path / "annotations"
    with file_lock(d / "annotate.shard-0-of-2.lock", what="exp3rt-annotate"):
        assert "pid" in (d / "annotate.shard-0-of-2.lock").read_text()
        with file_lock(d / "annotate.shard-1-of-2.lock", what="exp3rt-annotate", wait=False):
            pass  # another shard's lock is free
        with (
            open(d / "annotate.shard-0-of-2.lock"),
            pytest.raises(LockHeld, match=f"held by pid {os.getpid()} on"),
        ):
            with file_lock(d / "annotate.shard-0-of-2.lock", what="exp3rt-annotate", wait=False):
                pass


# --------------------------------------------------------------- item 4: failed extracts are not "no history"


def is_rationale(body: dict) -> bool:
    return "explain, step by step" in body["messages"][0]["content"]


def test_a_user_whose_extracts_all_failed_is_failed_upstream_and_nothing_is_built_on_it(server, tmp_path):
    from exp3rt.config import validate
    from exp3rt.data.prepare import prepare_dataset
    from exp3rt.data.splits import prepare_split

    args = overrides(server, tmp_path, "teacher.repair_retries=0", "split=unseen_user")
    cfg = validate(compose_annotate(args))
    split = prepare_split(prepare_dataset(cfg.dataset, cfg.paths.data_dir), cfg.split)
    victim = sorted(split.train.user_id)[0]
    texts = {
        t for t in split.train[split.train.user_id == victim].review if isinstance(t, str) and len(t) > 20
    }
    assert texts

    def answer(body):
        if is_extract(body) and any(t in body["messages"][-1]["content"] for t in texts):
            return "I cannot help with that."
        return teacher_answer(body)

    server.answer = answer
    result = annotate(tmp_path, args)
    d = Path(result["directory"])
    extract = pd.read_parquet(d / "extract.parquet")
    all_failed = extract.groupby("user_id")["status"].apply(lambda s: (s != "ok").all())
    assert all_failed[victim]
    users = pd.read_parquet(d / "user_profile.parquet").set_index("user_id")
    assert set(users.index[users.status == "failed_upstream"]) == set(all_failed.index[all_failed])
    assert (
        pd.isna(users.loc[victim, "profile"])
        and "extractions of this user's reviews failed" in users.loc[victim, "problem"]
    )
    # users with genuinely no training review keep their empty profile
    cold = set(users.index) - set(split.train.user_id)
    assert cold and (users.loc[sorted(cold), "status"] == "no_history").all()
    items = pd.read_parquet(d / "item_profile.parquet")
    item_failed = extract.groupby("item_id")["status"].apply(lambda s: (s != "ok").all())
    assert set(items.item_id[items.status == "failed_upstream"]) == set(item_failed.index[item_failed])
    # counted in the stage summary, listed in the failures file
    summary = json.loads((d / "user_profile.usage.json").read_text())
    assert summary["status"]["failed_upstream"] == int(all_failed.sum())
    listed = [json.loads(line) for line in (d / "user_profile.failures.jsonl").read_text().splitlines()]
    assert {r["user_id"] for r in listed if r["status"] == "failed_upstream"} == set(
        all_failed.index[all_failed]
    )
    # no rationale request was built on a failed_upstream profile: the victim's pairs are not sent
    rationale = pd.read_parquet(d / "rationale.parquet")
    mine = rationale[rationale.user_id == victim]
    assert len(mine) and (mine.status == "failed_upstream").all()
    assert mine.problem.str.contains("the user profile is failed_upstream").all()
    assert sum(1 for b in server.bodies if is_rationale(b)) == int(
        (rationale.status != "failed_upstream").sum()
    )
    assert not any(
        "- None." in b["messages"][-1]["content"] and victim in json.dumps(b) for b in server.bodies
    )


# --------------------------------------------------------------- item 5: retries and stale stages


def flaky(kind_of):
    """A server answer that breaks the extractions ``kind_of(prompt)`` picks: 'format' answers badly
    (every time), '500' fails the request; everything else is answered well."""

    def answer(body):  # messages[1]: the review's own prompt, also inside a repair request
        if is_extract(body) and kind_of(body["messages"][1]["content"]) == "format":
            return "I cannot help with that."
        return teacher_answer(body)

    def fail_when(body, n):
        return "500" if is_extract(body) and kind_of(body["messages"][1]["content"]) == "500" else None

    return answer, fail_when


def pick(prompt: str) -> str | None:
    import zlib

    return {0: "format", 1: "500"}.get(zlib.crc32(prompt.encode()) % 7)


def test_retry_failed_resends_exactly_the_failed_rows(server, tmp_path):
    server.answer, server.fail_when = flaky(pick)
    args = overrides(server, tmp_path, "stage=extract", "teacher.repair_retries=1", "teacher.max_retries=0")
    first = annotate(tmp_path, args, "a")
    d = Path(first["directory"])
    before = pd.read_parquet(d / "extract.parquet")
    failed = before[before.status == "failed"]
    kinds = failed.problem.str.contains("HTTP 500").value_counts()
    assert kinds.get(True, 0) > 0 and kinds.get(False, 0) > 0  # both kinds of failure are in the file
    # a plain rerun keeps the finished file as it is and says how to re-send its failed rows
    sent = server.total
    again = annotate(tmp_path, args, "b")
    assert server.total == sent and again["report"]["extract"]["skipped"]
    # the teacher is healthy now: retry_failed=true sends one request per failed row, nothing else
    server.answer, server.fail_when = teacher_answer, None
    retried = annotate(tmp_path, [*args, "retry_failed=true"], "c")
    assert server.total - sent == len(failed)
    after = pd.read_parquet(d / "extract.parquet")
    assert (after.status == "ok").all() and len(after) == len(before)
    ok = before.status == "ok"
    cols = ["user_id", "item_id", "status", "preference_set", "raw", "attempts"]
    assert (
        after[ok][cols].reset_index(drop=True).equals(before[ok][cols].reset_index(drop=True))
    )  # ok rows untouched
    assert retried["report"]["extract"]["retried_failed"] == len(failed)
    assert json.loads((d / "extract.usage.json").read_text())["retried_failed"] == len(failed)
    # nothing failed any more: another retry sends nothing
    annotate(tmp_path, [*args, "retry_failed=true"], "d")
    assert server.total - sent == len(failed)


def test_a_changed_upstream_stage_rebuilds_the_stages_built_from_it(server, tmp_path, caplog):
    import logging

    server.fail_when = flaky(pick)[1]  # some extractions fail with a 500 (not retried)
    args = overrides(server, tmp_path, "teacher.max_retries=0")
    first = annotate(tmp_path, args, "a")
    d = Path(first["directory"])
    extract = pd.read_parquet(d / "extract.parquet")
    assert (extract.status == "failed").sum() > 0
    users_before = pd.read_parquet(d / "user_profile.parquet")
    assert users_before.n_sets.sum() == (extract.status == "ok").sum()
    # the extraction is redone with a healthy teacher: the failed rows are answered now
    server.fail_when = None
    annotate(tmp_path, [*args, "stage=extract", "force=true"], "b")
    assert (pd.read_parquet(d / "extract.parquet").status == "ok").all()
    # the next run finds user_profile (and what is built on it) older than its input and rebuilds it
    with caplog.at_level(logging.WARNING, logger="exp3rt.teacher.annotate"):
        third = annotate(tmp_path, args, "c")
    report = third["report"]
    assert report["extract"]["skipped"]
    assert report["user_profile"]["rebuilt"] == {"changed_inputs": ["extract.parquet"]}
    assert report["item_profile"]["rebuilt"] == {"changed_inputs": ["extract.parquet"]}
    assert "user_profile.parquet" in report["rationale"]["rebuilt"]["changed_inputs"]
    assert (
        "stage user_profile: rebuilding user_profile.parquet: extract.parquet changed since it was built"
        in caplog.text
    )
    users = pd.read_parquet(d / "user_profile.parquet")
    assert users.n_sets.sum() == len(extract)
    # the rebuild reused every cached answer: only the extractions refused with a 500 were ever sent twice
    twice = [c for c in server.per_prompt.values() if c > 1]
    assert len(twice) == (extract.status == "failed").sum() and max(twice) == 2
    # what it was built from is on record: the digest of the extract file it read
    recorded = json.loads((d / "user_profile.inputs.json").read_text())["inputs"]
    assert recorded == {"extract.parquet": hashlib.sha256((d / "extract.parquet").read_bytes()).hexdigest()}
    # and now everything is current: the next run skips every stage
    assert all(r.get("skipped") for r in annotate(tmp_path, args, "d")["report"].values())


def test_a_single_stage_run_on_a_stale_input_stops_and_its_command_rebuilds_it(server, tmp_path):
    import shlex

    server.fail_when = flaky(pick)[1]
    args = overrides(server, tmp_path, "teacher.max_retries=0")
    d = Path(annotate(tmp_path, args, "a")["directory"])
    server.fail_when = None
    annotate(tmp_path, [*args, "stage=extract", "force=true"], "b")  # extract changes under the profiles
    rationale_before = (d / "rationale.parquet").read_bytes()
    # stage=rationale alone would build on user_profile/item_profile made from the old extract
    proc = cli([*args, "stage=rationale", f"hydra.run.dir={tmp_path / 'c'}"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (
        "stage=rationale would read stale input: user_profile.parquet was built from extract.parquet, which "
        "changed since; item_profile.parquet was built from extract.parquet, which changed since"
    ) in proc.stderr
    assert (d / "rationale.parquet").read_bytes() == rationale_before  # nothing was rebuilt on stale input
    command = proc.stderr.split("reusing cached answers: ")[1].strip().splitlines()[0]
    assert command.startswith("exp3rt-annotate ") and command.endswith(" stage=all")
    # pasted as it is (the console script is `python -m exp3rt.cli.annotate`), it rebuilds them
    pasted = shlex.split(command)[1:]
    done = cli(pasted, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    extract = pd.read_parquet(d / "extract.parquet")
    assert (
        pd.read_parquet(d / "user_profile.parquet").n_sets.sum()
        == len(extract)
        == (extract.status == "ok").sum()
    )
    assert cli([*args, "stage=rationale", f"hydra.run.dir={tmp_path / 'e'}"], tmp_path).returncode == 0


def test_the_pipeline_passes_retry_failed_to_its_annotate_stage(tmp_path, monkeypatch):
    from exp3rt import pipeline

    seen = {}

    def fake_annotate(cfg, prepared, split, **options):
        seen["retry_failed"] = options["retry_failed"]
        return {"directory": str(tmp_path)}

    monkeypatch.setattr(pipeline, "annotate", fake_annotate)  # the name the pipeline calls
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="pipeline", overrides=["retry_failed=true", f"paths.artifacts_dir={tmp_path}"]
        )
    pipeline._annotate(cfg, None, None, force=False)
    assert seen == {"retry_failed": True}


def test_parallel_shards_see_each_others_spend(tmp_path):
    """Two runs (two shards at once) on one directory's ledger: each counts what the other recorded."""
    import multiprocessing

    from exp3rt.teacher.spend import SpendLedger

    path = tmp_path / "teacher_spend.sqlite"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_spend, args=(str(path), 0.01 * (k + 1))) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    mine = SpendLedger(path)
    mine.record(calls=1, prompt_tokens=1, completion_tokens=1, cost_usd=0.5)
    assert mine.others_usd() == pytest.approx(50 * 0.01 + 50 * 0.02)
    assert mine.total() == {
        "runs": 3,
        "calls": 101,
        "prompt_tokens": 101,
        "completion_tokens": 101,
        "cost_usd": pytest.approx(50 * 0.01 + 50 * 0.02 + 0.5),
    }


def _spend(path: str, each: float) -> None:
    from exp3rt.teacher.spend import SpendLedger

    ledger = SpendLedger(path)
    for n in range(1, 51):  # running totals, committed after every answer
        ledger.record(calls=n, prompt_tokens=n, completion_tokens=n, cost_usd=n * each)
    ledger.close()
