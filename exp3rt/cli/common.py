"""Shared entry-point plumbing."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from exp3rt.config import ConfigError
from exp3rt.data.problems import DataError
from exp3rt.locks import LockHeld
from exp3rt.teacher.backends.base import TeacherError
from exp3rt.versions import warn_untested_versions


@contextlib.contextmanager
def fail_cleanly(log: logging.Logger):
    """Turn the errors a user can act on (bad config, bad input, missing file, a teacher that refused or a
    budget that ran out, another process holding the lock) into one clear line on stderr and exit status 2
    instead of a traceback; set EXP3RT_TRACEBACK=1 to see the traceback. (A crash with a traceback
    exits 1.)"""
    warn_untested_versions()  # a library upgraded past the tested range is said once, up front
    try:
        yield
    except (ConfigError, DataError, FileNotFoundError, TeacherError, LockHeld) as e:
        if os.environ.get("EXP3RT_TRACEBACK"):
            raise
        log.error("%s", e)
        if _in_multirun():  # an ordinary exception: Hydra records this job as failed and runs the others
            raise JobFailed(f"error: {e}") from None
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


class JobFailed(RuntimeError):
    """One job of a multirun failed for a reason the user can act on (already logged)."""


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - outside Hydra
        return False
