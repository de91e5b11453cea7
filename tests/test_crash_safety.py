"""Crash safety: every artifact is written under a temporary name and renamed into place, a ``.sha``
record beside it keeps its size and checksum, and a stage that finds its finished file damaged
(truncated by a crash, changed on disk) says so with a warning naming the file and rebuilds it instead
of failing with a pyarrow traceback or silently trusting it."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from test_annotate import SMALL_WORLD, annotate

from exp3rt.artifacts import (
    atomic_path,
    damage,
    intact,
    sha_path,
    write_json_atomic,
    write_parquet_atomic,
    write_text_atomic,
)

REPO = Path(__file__).resolve().parents[1]


def truncate(path: Path, keep: float = 0.5) -> None:
    """What a crash in the middle of an in-place write leaves: the first part of the bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


def damaged_warnings(caplog, name: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "damaged artifact" in r.getMessage() and name in r.getMessage()
    ]


# -- the helpers ---------------------------------------------------------------------------------------


def test_atomic_writes_leave_the_file_and_its_record_and_no_temporary_file(tmp_path):
    write_text_atomic(tmp_path / "a.md", "hello")
    write_json_atomic(tmp_path / "b.json", {"x": 1})
    write_parquet_atomic(pd.DataFrame({"x": [1, 2, 3]}), tmp_path / "c.parquet")
    assert (tmp_path / "a.md").read_text() == "hello"
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": 1}
    assert pd.read_parquet(tmp_path / "c.parquet")["x"].tolist() == [1, 2, 3]
    for name in ("a.md", "b.json", "c.parquet"):
        rec = json.loads(sha_path(tmp_path / name).read_text())
        assert rec["size"] == (tmp_path / name).stat().st_size and len(rec["blake2b"]) == 32
        assert damage(tmp_path / name) is None
    assert leftovers(tmp_path) == []


def test_a_failed_write_leaves_the_old_file_untouched_and_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "t.parquet"
    write_parquet_atomic(pd.DataFrame({"x": [1]}), target)
    before, record = target.read_bytes(), sha_path(target).read_text()

    def half_then_crash(self, path, **kw):  # the writer dies after part of the bytes are on disk
        Path(path).write_bytes(b"PAR1" + b"\0" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        write_parquet_atomic(pd.DataFrame({"x": [2, 3]}), target)
    assert target.read_bytes() == before and sha_path(target).read_text() == record
    assert leftovers(tmp_path) == []


def test_a_failed_rename_leaves_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "m.json"
    write_json_atomic(target, {"old": True})

    def refuse(src, dst):
        raise OSError("rename refused")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="rename refused"):
        write_json_atomic(target, {"old": False})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": True} and damage(target) is None
    assert leftovers(tmp_path) == []


def test_atomic_path_raising_inside_the_block_removes_what_was_written(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "x.txt") as tmp:
        tmp.write_text("partial")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_damage_names_a_truncated_a_changed_and_an_unrecorded_unreadable_file(tmp_path, caplog):
    write_parquet_atomic(pd.DataFrame({"x": range(100)}), tmp_path / "t.parquet")
    truncate(tmp_path / "t.parquet")
    assert "bytes where" in damage(tmp_path / "t.parquet")
    write_json_atomic(tmp_path / "c.json", {"a": 1})
    (tmp_path / "c.json").write_text(
        (tmp_path / "c.json").read_text().replace("1", "2")
    )  # same size, other bytes
    assert "checksum" in damage(tmp_path / "c.json")
    (tmp_path / "old.parquet").write_bytes(b"PAR1 not a parquet file")  # no .sha: written before records
    assert "unreadable" in damage(tmp_path / "old.parquet")
    with caplog.at_level(logging.WARNING):
        assert not intact(tmp_path / "t.parquet")
    assert damaged_warnings(caplog, "t.parquet")
    assert not intact(tmp_path / "missing.parquet")


# -- the stages ----------------------------------------------------------------------------------------


def test_a_truncated_teacher_stage_file_is_rebuilt_from_the_answer_cache_with_a_warning(tmp_path, caplog):
    first = annotate(tmp_path, [*SMALL_WORLD, "stage=extract"], "a")
    d = Path(first["directory"])
    whole = pd.read_parquet(d / "extract.parquet")
    truncate(d / "extract.parquet")  # a crash in the middle of the old in-place to_parquet
    with caplog.at_level(logging.WARNING):
        second = annotate(tmp_path, [*SMALL_WORLD, "stage=extract"], "b")
    assert damaged_warnings(caplog, "extract.parquet")
    rep = second["report"]["extract"]
    assert not rep.get("skipped") and rep["rebuilt"] == {"damaged": "extract.parquet"}
    assert rep["usage"]["calls"] == 0 and rep["usage"]["cached"] == len(whole)  # nothing was asked twice
    pd.testing.assert_frame_equal(pd.read_parquet(d / "extract.parquet"), whole)
    assert damage(d / "extract.parquet") is None
    third = annotate(tmp_path, [*SMALL_WORLD, "stage=extract"], "c")
    assert third["report"]["extract"]["skipped"]


def test_a_later_stage_does_not_read_a_damaged_upstream_file(tmp_path, caplog):
    from exp3rt.config import ConfigError

    d = Path(annotate(tmp_path, [*SMALL_WORLD, "stage=extract"], "a")["directory"])
    truncate(d / "extract.parquet")
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(ConfigError, match=r"extract\.parquet is damaged.*stage=extract"),
    ):
        annotate(tmp_path, [*SMALL_WORLD, "stage=user_profile"], "b")


def test_a_damaged_prepared_dataset_is_rebuilt_with_a_warning(tmp_path, caplog):
    from hydra import compose, initialize_config_dir

    from exp3rt import CONF_DIR
    from exp3rt.config import validate
    from exp3rt.data.prepare import prepare_dataset
    from exp3rt.data.splits import prepare_split

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = validate(
            compose(config_name="annotate", overrides=[f"paths.artifacts_dir={tmp_path}", *SMALL_WORLD])
        )
    first = prepare_dataset(cfg.dataset, tmp_path / "data")
    truncate(first.directory / "interactions.parquet")
    with caplog.at_level(logging.WARNING):
        second = prepare_dataset(cfg.dataset, tmp_path / "data")
    assert damaged_warnings(caplog, "interactions.parquet")
    assert not second.reused and second.directory == first.directory
    pd.testing.assert_frame_equal(
        pd.read_parquet(second.directory / "interactions.parquet"), first.dataset.interactions
    )
    assert prepare_dataset(cfg.dataset, tmp_path / "data").reused
    split = prepare_split(second, cfg.split)
    (split.directory / "meta.json").write_text('{"stage": ')  # a meta.json cut short
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = prepare_split(second, cfg.split)
    assert damaged_warnings(caplog, "meta.json") and not again.reused
    assert prepare_split(second, cfg.split).reused
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name or ".damaged" in p.name]


def test_a_damaged_evaluation_baselines_or_training_marker_is_not_taken_as_finished(env, caplog):
    """The pipeline skips a stage whose marker file exists; a truncated metrics.json (evaluation,
    baselines) or train.json made it crash with a JSONDecodeError instead. Now the stage runs again with
    a warning naming the file — training resumes from its checkpoint, which is kept."""
    from test_pipeline import FAST, run_in_process

    tmp_path = env
    first = run_in_process(FAST, tmp_path / "run1")
    dirs = {s: Path(first["stages"][s]["dir"]) for s in ("baselines", "train", "evaluate")}
    truncate(dirs["evaluate"] / "metrics.json")
    truncate(dirs["baselines"] / "metrics.json")
    truncate(dirs["train"] / "train.json")
    checkpoints = sorted(p.name for p in (dirs["train"] / "checkpoints").iterdir())
    with caplog.at_level(logging.WARNING):
        second = run_in_process(FAST, tmp_path / "run2")
    status = {s: second["stages"][s]["status"] for s in ("baselines", "annotate", "train", "evaluate")}
    assert status == {"baselines": "ran", "annotate": "skipped", "train": "resumed", "evaluate": "ran"}
    for d, name in (
        (dirs["evaluate"], "metrics.json"),
        (dirs["baselines"], "metrics.json"),
        (dirs["train"], "train.json"),
    ):
        assert damaged_warnings(caplog, str(d / name))
        assert damage(d / name) is None
    assert set(checkpoints) <= {p.name for p in (dirs["train"] / "checkpoints").iterdir()}  # no work lost
    assert second["rating"] == first["rating"]
    third = run_in_process(FAST, tmp_path / "run3")
    assert {third["stages"][s]["status"] for s in ("baselines", "annotate", "train", "evaluate")} == {
        "skipped"
    }


HALF_WRITE = textwrap.dedent("""
    import io, sys, time
    import pandas as pd

    real = pd.DataFrame.to_parquet

    def half_then_hang(self, path, *args, **kwargs):
        if "extract" not in str(path):
            return real(self, path, *args, **kwargs)
        buf = io.BytesIO()
        real(self, buf, *args, **kwargs)
        data = buf.getvalue()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
        print("HALF WRITTEN", flush=True)
        time.sleep(120)  # killed here, in the middle of the write

    pd.DataFrame.to_parquet = half_then_hang
    sys.argv = ["exp3rt-annotate", *sys.argv[1:]]
    from exp3rt.cli.annotate import main

    main()
""")


def test_a_process_killed_in_the_middle_of_writing_a_stage_file_leaves_nothing_taken_as_done(
    tmp_path, caplog
):
    """A real exp3rt-annotate SIGKILLed while half of extract.parquet is on disk: the rerun builds the
    stage (from the answer cache) instead of skipping it or failing on a truncated parquet."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    args = [
        f"paths.artifacts_dir={tmp_path}/artifacts",
        "progress=false",
        *SMALL_WORLD,
        "stage=extract",
        f"hydra.run.dir={tmp_path}/killed",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-c", HALF_WRITE, *args],
        cwd=tmp_path,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        for line in proc.stdout:
            if "HALF WRITTEN" in line:
                break
        else:
            pytest.fail("the child never reached the stage write")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    d = next((tmp_path / "artifacts" / "annotations").glob("*/*"))
    assert not (d / "extract.parquet").exists()  # the partial bytes went to a hidden temporary name
    with caplog.at_level(logging.WARNING):
        result = annotate(tmp_path, [*SMALL_WORLD, "stage=extract"], "again")
    rep = result["report"]["extract"]
    assert not rep.get("skipped") and rep["rows"] > 0
    assert (
        damage(d / "extract.parquet") is None and len(pd.read_parquet(d / "extract.parquet")) == rep["rows"]
    )
