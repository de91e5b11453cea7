"""Issue 16's teacher items: a crash, a rerun, a second process or a bad answer never loses work, pays
twice or hides a failure. Every test talks to the fault-injecting OpenAI-compatible server on 127.0.0.1
(tests/fake_openai.py) through the real ``openai`` client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI
from hydra import compose, initialize_config_dir
from test_annotate_http import SECRET, overrides, teacher_answer

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
    return {**os.environ, "OPENAI_API_KEY": SECRET, "EXP3RT_OUTPUTS": str(tmp_path / "outputs"),
            "PYTHONPATH": str(CONF_DIR.parent), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cli(args: list[str], tmp_path: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exp3rt.cli.annotate", *args], env=cli_env(tmp_path),
                          cwd=CONF_DIR.parent, capture_output=True, text=True, timeout=300, **kw)


def is_extract(body: dict) -> bool:
    return "list what the reviewer liked" in body["messages"][0]["content"]


# ------------------------------------------------------------------------ item 9: bodies and exit status


@pytest.mark.parametrize("kind", ["html_502", "html_200"])
def test_an_html_error_page_is_kept_in_the_failure_record(server, tmp_path, kind):
    server.fail_when = lambda body, n: kind if n == 1 else None
    result = annotate(tmp_path, overrides(server, tmp_path, "stage=extract", "teacher.max_retries=0",
                                          "teacher.concurrency=1"))
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
