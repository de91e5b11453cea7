"""How many CPU threads a job's torch (and the OpenMP/MKL libraries under it) may use: the ``threads`` key.

torch starts one intra-op thread per core it can see, whatever else runs there. Jobs that share cores
then oversubscribe them: a training sharing 2 cores with other torch jobs ran 27x slower, and LightGCN
took 55.9 s instead of 0.9 s with ``OMP_NUM_THREADS=1``. Every entry point calls :func:`apply_threads`
right after validating its config, before any torch work.

``threads: auto`` is the cores this job is given (:func:`auto_threads`): ``OMP_NUM_THREADS`` when the
environment sets it (the user already chose); else ``SLURM_CPUS_PER_TASK`` inside a SLURM job (its own
allocation); else the CPU affinity (``os.sched_getaffinity``) divided by the jobs a local parallel
Hydra launcher runs at once (joblib's ``n_jobs``, submitit_local's ``tasks_per_node``), at least 1.
An integer is used as given.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from exp3rt.config import check_threads

log = logging.getLogger(__name__)

ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # what subprocesses (DataLoader workers, a teacher) inherit
_LOGGED: set[tuple[int, str]] = set()
# the user's OMP_NUM_THREADS, read before apply_threads writes its own (a later call must not take that for
# theirs)
_INHERITED_OMP = os.environ.get("OMP_NUM_THREADS")


def auto_threads(cores: int, parallel_jobs: int = 1, slurm_cpus: int | None = None) -> int:
    """``threads: auto``: SLURM's CPUs per task when given (the job's own allocation), else ``cores``
    shared by ``parallel_jobs`` jobs on this machine; never below 1."""
    if slurm_cpus:
        return max(1, int(slurm_cpus))
    return max(1, int(cores) // max(1, int(parallel_jobs)))


def _positive_int(text: str | None) -> int | None:
    try:
        n = int(str(text).strip())
    except (TypeError, ValueError):
        return None
    return n if n >= 1 else None


def cores_available() -> int:
    """The cores this process may run on (its affinity, which a container or ``taskset`` narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parallel_jobs(launcher: Any, multirun: bool, cores: int) -> int:
    """How many jobs of this multirun a local parallel launcher runs at once on this machine: joblib's
    ``n_jobs`` (-1: every core, -2: all but one, as joblib reads it), submitit_local's ``tasks_per_node``.
    A single run, the basic (sequential) launcher or SLURM (each job its own allocation): 1."""
    if not multirun or launcher is None:
        return 1
    target = str(launcher.get("_target_", "") or "")
    if "joblib" in target.lower():
        n = launcher.get("n_jobs", -1)
        n = -1 if n is None else int(n)
        return max(1, cores + 1 + n if n < 0 else n)
    if target.endswith("LocalLauncher"):  # hydra_submitit_launcher's submitit_local
        return max(1, int(launcher.get("tasks_per_node", 1) or 1))
    return 1


def _hydra_launcher() -> tuple[Any, bool]:
    """(``hydra.launcher`` config, whether this is a multirun job) of the Hydra run in progress."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None, False
        hc = HydraConfig.get()
        return hc.get("launcher"), hc.mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - outside Hydra
        return None, False


def resolve_threads(
    setting: Any,
    environ: dict | None = None,
    cores: int | None = None,
    launcher: Any = None,
    multirun: bool = False,
) -> tuple[int, str]:
    """(threads, where the number came from) for a ``threads`` setting."""
    value = check_threads(setting)
    if value != "auto":
        return int(value), "threads"
    env = os.environ if environ is None else environ
    omp = _positive_int(env.get("OMP_NUM_THREADS"))
    if omp:
        return omp, "OMP_NUM_THREADS"
    slurm = _positive_int(env.get("SLURM_CPUS_PER_TASK"))
    if slurm:
        return auto_threads(0, 1, slurm), "SLURM_CPUS_PER_TASK"
    cores = cores_available() if cores is None else int(cores)
    jobs = parallel_jobs(launcher, multirun, cores)
    where = f"{cores} cores" + (f" / {jobs} parallel jobs" if jobs > 1 else "")
    return auto_threads(cores, jobs), where


def apply_threads(cfg: Any) -> int:
    """Apply the config's ``threads`` (``auto`` when the key is absent) to torch and to the environment
    subprocesses inherit; logged once per value. Returns the thread count."""
    import torch

    setting = cfg.get("threads", "auto") if cfg is not None else "auto"
    launcher, multirun = _hydra_launcher()
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if _INHERITED_OMP is not None:
        env["OMP_NUM_THREADS"] = _INHERITED_OMP
    n, source = resolve_threads(
        "auto" if setting is None else setting, environ=env, launcher=launcher, multirun=multirun
    )
    for key in ENV_KEYS:
        os.environ[key] = str(n)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except (
        RuntimeError
    ):  # only allowed once, before any inter-op parallel work; the intra-op count is what matters
        pass
    if (n, source) not in _LOGGED:
        _LOGGED.add((n, source))
        log.info(
            "threads: %d (%s; torch intra-op %d, inter-op %d)",
            n,
            source,
            torch.get_num_threads(),
            torch.get_num_interop_threads(),
        )
    return n
