"""Loader stub — to be implemented."""

from __future__ import annotations

from exp3rt.data.problems import InputProblems
from exp3rt.data.schema import Dataset


def load_release(cfg, problems: InputProblems) -> Dataset:
    raise NotImplementedError("load_release")
