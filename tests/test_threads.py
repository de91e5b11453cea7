"""The ``threads`` key: every entry point sets torch's (and OpenMP/MKL's) thread count before any torch
work; ``auto`` is the cores the job is given, shared by the jobs a local parallel launcher runs at once."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from exp3rt import CONF_DIR
from exp3rt.config import ConfigError, validate
from exp3rt.threads import apply_threads, auto_threads, parallel_jobs, resolve_threads

JOBLIB = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}
LOCAL = {
    "_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    "tasks_per_node": 3,
}
SLURM = {
    "_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
    "tasks_per_node": 8,
}
BASIC = {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}


@pytest.fixture
def restore_threads(monkeypatch):
    before = torch.get_num_threads()
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # restored by monkeypatch afterwards
        monkeypatch.setenv(key, os.environ.get(key, "1"))
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("cores", "jobs", "want"), [(16, 1, 16), (16, 2, 8), (16, 3, 5), (2, 4, 1), (1, 1, 1), (8, 0, 8)]
)
def test_auto_is_the_cores_shared_by_the_parallel_jobs_and_at_least_one(cores, jobs, want):
    assert auto_threads(cores, jobs) == want == max(1, cores // max(1, jobs))


def test_auto_reads_slurm_the_affinity_and_the_launcher():
    assert resolve_threads("auto", environ={}, cores=8) == (8, "8 cores")
    assert resolve_threads("auto", environ={}, cores=8, launcher=JOBLIB, multirun=True) == (
        4,
        "8 cores / 2 parallel jobs",
    )
    assert resolve_threads("auto", environ={}, cores=9, launcher=LOCAL, multirun=True)[0] == 3
    assert (
        resolve_threads("auto", environ={}, cores=2, launcher={**JOBLIB, "n_jobs": 3}, multirun=True)[0] == 1
    )
    # a launcher only counts in a multirun, and SLURM and the basic launcher run one job per allocation / at a
    # time
    assert resolve_threads("auto", environ={}, cores=8, launcher=JOBLIB, multirun=False)[0] == 8
    assert resolve_threads("auto", environ={}, cores=8, launcher=SLURM, multirun=True)[0] == 8
    assert resolve_threads("auto", environ={}, cores=8, launcher=BASIC, multirun=True)[0] == 8
    assert resolve_threads(
        "auto", environ={"SLURM_CPUS_PER_TASK": "6"}, cores=64, launcher=SLURM, multirun=True
    ) == (6, "SLURM_CPUS_PER_TASK")
    # an OMP_NUM_THREADS the user exported is their choice; a number in the config is used as given
    assert resolve_threads("auto", environ={"OMP_NUM_THREADS": "3", "SLURM_CPUS_PER_TASK": "6"}, cores=8) == (
        3,
        "OMP_NUM_THREADS",
    )
    assert resolve_threads(5, environ={"OMP_NUM_THREADS": "3"}, cores=8) == (5, "threads")


def test_joblib_n_jobs_counts_like_joblib():
    assert parallel_jobs({**JOBLIB, "n_jobs": -1}, True, 8) == 8  # every core: one thread each
    assert parallel_jobs({**JOBLIB, "n_jobs": -2}, True, 8) == 7
    assert parallel_jobs({**JOBLIB, "n_jobs": None}, True, 8) == 8


def test_threads_is_validated():
    for bad in (0, -2, "many", 1.5):
        with pytest.raises(ConfigError, match="'threads' must be auto or an integer >= 1"):
            validate(OmegaConf.create({"threads": bad}))
    assert validate(OmegaConf.create({"threads": 2})).threads == 2


def test_apply_threads_sets_torch_and_the_environment_and_logs_once(restore_threads, caplog, monkeypatch):
    import exp3rt.threads

    monkeypatch.setattr(exp3rt.threads, "_LOGGED", set())
    torch.set_num_threads(2)
    with caplog.at_level(logging.INFO, logger="exp3rt.threads"):
        assert apply_threads(OmegaConf.create({"threads": 1})) == 1
        apply_threads(OmegaConf.create({"threads": 1}))
    assert torch.get_num_threads() == 1
    assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "1"
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("threads:")] == [
        f"threads: 1 (threads; torch intra-op 1, inter-op {torch.get_num_interop_threads()})"
    ]


def test_an_entry_point_applies_threads_before_its_work(restore_threads, tmp_path):
    from exp3rt.cli.baselines import run

    torch.set_num_threads(2)
    world = [
        "dataset.world.n_users=12",
        "dataset.world.n_items=10",
        "dataset.world.min_per_user=4",
        "dataset.world.max_per_user=5",
        "baselines.retrieval.models=[popularity]",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="baselines",
            overrides=[f"paths.artifacts_dir={tmp_path}/artifacts", "threads=1", *world],
        )
    run(cfg, tmp_path / "run")
    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"


def test_auto_keeps_the_users_omp_setting_not_the_one_it_wrote(restore_threads, monkeypatch):
    """apply_threads exports its choice for subprocesses; a later ``auto`` in the same process must
    read the user's OMP_NUM_THREADS, not that."""
    import exp3rt.threads

    monkeypatch.setattr(exp3rt.threads, "_INHERITED_OMP", "1")
    apply_threads(OmegaConf.create({"threads": 2}))
    assert os.environ["OMP_NUM_THREADS"] == "2"
    assert apply_threads(OmegaConf.create({"threads": "auto"})) == 1 == torch.get_num_threads()


def test_every_entry_config_has_the_key():
    for name in ("pipeline", "train", "evaluate", "baselines", "annotate"):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            assert compose(config_name=name).threads == "auto", name
