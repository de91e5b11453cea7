"""Crash safety: every artifact is written under a temporary name and renamed into place, a ``.sha``
record beside it keeps its size and checksum, and a stage that finds its finished file damaged
(truncated by a crash, changed on disk) says so with a warning naming the file and rebuilds it instead
of failing with a pyarrow traceback or silently trusting it."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd
import pytest

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
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "damaged artifact" in r.getMessage()
            and name in r.getMessage()]


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
    (tmp_path / "c.json").write_text((tmp_path / "c.json").read_text().replace("1", "2"))  # same size, other bytes
    assert "checksum" in damage(tmp_path / "c.json")
    (tmp_path / "old.parquet").write_bytes(b"PAR1 not a parquet file")  # no .sha: written before records
    assert "unreadable" in damage(tmp_path / "old.parquet")
    with caplog.at_level(logging.WARNING):
        assert not intact(tmp_path / "t.parquet")
    assert damaged_warnings(caplog, "t.parquet")
    assert not intact(tmp_path / "missing.parquet")
