"""Exclusive file locks between processes (``fcntl.flock``), with the holder's pid written in the file.

:func:`file_lock` is what the pipeline holds around a shared stage and what ``exp3rt-annotate`` holds
around an annotation directory (one lock per shard when sharded), so two processes never send the same
teacher requests at once. A second process waits, saying whom it waits for, or with ``wait=False``
raises :class:`LockHeld` naming the holder's pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)


class LockHeld(RuntimeError):
    """Another process holds the lock and the caller chose not to wait (a clean failure: exit status 2)."""


def lock_holder(path: Path) -> str:
    """Who holds (or last held) ``path``, as its holder wrote it: ``pid 123 on host since …``."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        text = ""
    return text or "another process (it has not written its pid yet)"


@contextlib.contextmanager
def file_lock(path: Path, what: str = "artifact", wait: bool = True, hint: str = ""):
    """Hold ``fcntl.flock(LOCK_EX)`` on ``path`` (created; works across processes and, on NFS, across
    nodes) and write this process's pid into it. When another process holds it: log whom we wait for
    and wait, or with ``wait=False`` raise :class:`LockHeld`. Where the filesystem refuses locks (e.g.
    Lustre mounted without flock) it warns and goes on unlocked, as before."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = lock_holder(path)
                if not wait:
                    raise LockHeld(
                        f"{what}: {path} is held by {holder}; wait for it to finish{hint}"
                    ) from None
                log.warning("%s: waiting for %s, which holds %s", what, holder, path)
                fcntl.flock(f, fcntl.LOCK_EX)
        except OSError as e:
            log.warning("%s: cannot lock %s (%s); parallel jobs may repeat this stage", what, path, e)
            yield
            return
        try:
            f.seek(0)
            f.truncate()
            f.write(
                f"pid {os.getpid()} on {socket.gethostname()} since "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
            )
            f.flush()
        except OSError:  # the pid is a courtesy; the lock is what matters
            pass
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                f.truncate(0)
                f.flush()
            fcntl.flock(f, fcntl.LOCK_UN)
