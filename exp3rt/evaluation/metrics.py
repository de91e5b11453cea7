"""Moved to :mod:`exp3rt.metrics` (a low-level module the baselines, inference and evaluation all use)."""

from exp3rt.metrics import *  # noqa: F403 - the old import path keeps working
