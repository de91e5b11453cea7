"""Prepared-data artifacts: written once with a data report and provenance, reloaded by fingerprint,
rebuilt when a config value or an input byte changes; lenient skips are counted in the report."""

from __future__ import annotations

import json

import pytest
from helpers import typed

from exp3rt.data.prepare import prepare_dataset
from exp3rt.data.problems import DataError

GOOD = {
    "user_id": "u1",
    "item_id": "i1",
    "user_persona": "[Like]\n- Twists\n\n[Dislike]\n- None\n\n[Average Rating]\n4.0",
    "item_synopsis": "[Like]\n- Dialogue\n\n[Dislike]\n- Length\n\n[Average Rating]\n3.5",
    "item_description": "Title: A Film (1999)\nGenres: Drama\nPlot: Things happen.",
    "score": "4",
}


def release_cfg(path, **kw):
    node = {
        "name": "rel",
        "loader": "exp3rt_release",
        "path": str(path),
        "require_review": False,
        "release": {"rating_test": "test.json"},
        **kw,
    }
    return typed("dataset", node)


def test_synthetic_prepare_writes_report_and_reuses(tmp_path):
    cfg = typed(
        "dataset",
        {
            "name": "synthetic",
            "loader": "synthetic",
            "domain": "movie",
            "world": {"n_users": 30, "n_items": 40},
        },
    )
    first = prepare_dataset(cfg, tmp_path)
    assert not first.reused
    files = {p.name for p in first.directory.iterdir()}
    assert {
        "interactions.parquet",
        "items.parquet",
        "data_report.json",
        "data_report.md",
        "dataset.yaml",
        "meta.json",
    } <= files
    assert "This dataset is synthetic" in (first.directory / "data_report.md").read_text()
    meta = json.loads((first.directory / "meta.json").read_text())
    assert meta["fingerprint"] == first.fingerprint and meta["report"]["summary"]["synthetic"] is True
    again = prepare_dataset(cfg, tmp_path)
    assert again.reused and again.directory == first.directory
    assert again.dataset.interactions.equals(first.dataset.interactions)
    assert again.dataset.synthetic
    other = prepare_dataset(typed("dataset", {**cfg, "world": {**cfg.world, "seed": 99}}), tmp_path)
    assert other.directory != first.directory


def test_changed_input_file_gives_new_artifact(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "test.json").write_text(json.dumps([GOOD]))
    first = prepare_dataset(release_cfg(src), tmp_path / "data")
    (src / "test.json").write_text(json.dumps([{**GOOD, "score": "5"}]))
    second = prepare_dataset(release_cfg(src), tmp_path / "data")
    assert first.directory != second.directory and not second.reused
    assert second.dataset.interactions["rating"].tolist() == [5.0]


def test_lenient_skips_are_counted_in_the_report_and_strict_names_the_record(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    bad = {**GOOD, "item_id": "i2", "score": "11"}
    (src / "test.json").write_text(json.dumps([GOOD, bad]))
    with pytest.raises(DataError, match=r"test\.json.*'score'"):
        prepare_dataset(release_cfg(src), tmp_path / "data")
    assert not any((tmp_path / "data").glob("*/meta.json"))  # nothing half-written is left behind
    lenient = prepare_dataset(release_cfg(src, strict=False), tmp_path / "data")
    assert len(lenient.dataset.interactions) == 1
    report = json.loads((lenient.directory / "data_report.json").read_text())
    assert report["skipped_total"] == 1
    assert "skipped: 1" in (lenient.directory / "data_report.md").read_text()


def test_missing_input_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset.path does not exist"):
        prepare_dataset(
            typed("dataset", {"name": "x", "loader": "tabular", "path": str(tmp_path / "nope.csv")}), tmp_path
        )
