"""Shared fixtures. Tests that read ../shared/data skip when that folder is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("EXP3RT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is absent")
    return path


@pytest.fixture
def env(tmp_path, monkeypatch):
    """``tmp_path``, with the artifact, output and multirun roots (``EXP3RT_ARTIFACTS``,
    ``EXP3RT_OUTPUTS``, ``EXP3RT_MULTIRUN``) pointed into it and W&B offline, for a test that runs a
    pipeline or a CLI."""
    for var, sub in (
        ("EXP3RT_ARTIFACTS", "artifacts"),
        ("EXP3RT_OUTPUTS", "outputs"),
        ("EXP3RT_MULTIRUN", "multirun"),
    ):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    return tmp_path
