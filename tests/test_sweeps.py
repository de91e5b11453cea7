"""Clusters, sweeps and hyperparameter search: the W&B sweep YAMLs (their commands, every parameter value
composed with Hydra and validated, the metric a name the entry point really logs), the Optuna preset
(sweeper config, search space, sqlite storage), the SLURM launcher presets (the sbatch script submitit
would submit: one task per device) and, in `slow` tests, a real multirun through submitit, a 2-trial
Optuna study and one run as a W&B agent starts it."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import OmegaConf

from exp3rt import CONF_DIR
from exp3rt.config import ConfigError, validate

REPO = CONF_DIR.parent
SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))
# a pipeline run small enough for a test (about 30 s on 2 CPU cores)
TINY = [
    "debug=default",
    "trainer.max_steps=10",
    "eval.max_pairs=5",
    "eval.rerank=false",
    "eval.mode=fast",
    "progress=false",
]


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


needs_submitit = pytest.mark.skipif(
    not _has("hydra_plugins.hydra_submitit_launcher"),
    reason="hydra-submitit-launcher is not installed (the `slurm` extra)",
)
needs_optuna = pytest.mark.skipif(
    not _has("hydra_plugins.hydra_optuna_sweeper"),
    reason="hydra-optuna-sweeper is not installed (the `optuna` extra)",
)


def compose_pipeline(overrides: list[str], hydra_cfg: bool = True):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="pipeline", overrides=overrides, return_hydra_config=hydra_cfg)


# ---------------------------------------------------------------- the names the entry point logs


@functools.cache
def logged_metric_names() -> frozenset[str]:
    """Every metric name exp3rt-pipeline writes to metrics.json "flat" and W&B, built by the code that
    builds them (evaluate's error table and reranking metrics, both flat_metrics functions) plus what
    the LightningModule logs with self.log — not a copied list."""
    from exp3rt.evaluation.report import flat_metrics as eval_flat
    from exp3rt.evaluation.scoring import error_table, fallback_models
    from exp3rt.inference.prediction import Prediction
    from exp3rt.inference.rerank import rerank_metrics
    from exp3rt.pipeline import flat_metrics as pipeline_flat

    preds = [
        Prediction("u1", "i1", 4.0, True, "r", rating_argmax=4.0, rating_expected=3.8),
        Prediction("u2", "i2", 2.0, False, "", rating_argmax=None, rating_expected=None),
    ]
    means = fallback_models(
        pd.DataFrame({"user_id": ["u1", "u3"], "item_id": ["i1", "i3"], "rating": [4.0, 2.0]})
    )
    readouts = [f.name.removeprefix("rating_") for f in fields(Prediction) if f.name.startswith("rating_")]
    rating = {f"student_{r}": error_table(preds, r, "user_mean", means) for r in readouts}
    rerank = rerank_metrics(
        {"u1": ["a", "b", "c"]}, {"u1": ["b", "a", "c"]}, {"u1": {"b"}}, ks=(1, 5, 10), seconds_per_user=0.1
    )
    metrics = {"rating": rating, "rerank": rerank}
    names = set(eval_flat(metrics)) | set(pipeline_flat({**metrics, "efficiency": {"train_seconds": 1.0}}))
    src = (REPO / "exp3rt" / "student" / "lightning.py").read_text()
    names |= {m for m in re.findall(r"self\.log\(\s*f?\"([^\"]+)\"", src) if "{" not in m}
    return frozenset(names)


def test_logged_names_hold_the_ones_sweeps_and_optuna_use():
    names = logged_metric_names()
    assert {"rating/student_expected/rmse", "rerank/after/ndcg@10", "train/loss", "val/loss"} <= names
    assert str(compose_pipeline([], hydra_cfg=False).objective) in names


# ---------------------------------------------------------------- W&B sweep YAMLs


def load_sweep(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def param_values(spec: dict) -> list:
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    assert "min" in spec and "max" in spec, f"parameter spec {spec} has no value, values or min/max"
    assert all(isinstance(spec[k], int | float) for k in ("min", "max")), f"min/max must be numbers: {spec}"
    return [spec["min"], spec["max"]]


def runs_covering(parameters: dict) -> list[dict]:
    """Parameter sets a sweep can hand to a run that together hold every value of every parameter:
    run i takes each parameter's i-th value (cycling), so as many runs as the longest list."""
    values = {k: param_values(s) for k, s in parameters.items()}
    return [{k: v[i % len(v)] for k, v in values.items()} for i in range(max(map(len, values.values())))]


def agent_args(params: dict) -> list[str]:
    """``${args_no_hyphens}`` as the W&B agent expands it for one run."""
    try:
        from wandb.sdk.launch.sweeps.utils import create_sweep_command_args
    except ImportError:  # the agent's format: key=value with Python's str() of the value
        return [f"{k}={v}" for k, v in params.items()]
    return create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})[
        "args_no_hyphens"
    ]


def pipeline_defaults() -> dict:
    """conf/pipeline.yaml's defaults list as {group: choice}."""
    out = {}
    for entry in yaml.safe_load((CONF_DIR / "pipeline.yaml").read_text())["defaults"]:
        if isinstance(entry, dict):
            ((group, choice),) = entry.items()
            out[group.removeprefix("optional ").removeprefix("override ")] = choice
    return out


def test_the_sweeps_are_there():
    assert {p.stem for p in SWEEPS} >= {"ablation_grid", "lora_rank", "learning_rate"}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_command_runs_the_pipeline_entry_point(path):
    import exp3rt.cli.pipeline

    sweep = load_sweep(path)
    cmd = [str(c) for c in sweep["command"]]
    assert "${args_no_hyphens}" in cmd  # plain key=value overrides: Hydra, not argparse
    assert cmd[cmd.index("-m") + 1] == "exp3rt"
    assert importlib.import_module("exp3rt.__main__").main is exp3rt.cli.pipeline.main
    assert (REPO / sweep["program"]).is_file()
    assert sweep["method"] in ("grid", "random", "bayes")
    assert sweep["metric"]["goal"] in ("minimize", "maximize")
    assert sweep.get("project") == compose_pipeline([], hydra_cfg=False).logger.project


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_metric_is_a_name_the_entry_point_logs(path):
    assert load_sweep(path)["metric"]["name"] in logged_metric_names()


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_sweep_value_composes_validates_and_lands(path, monkeypatch):
    monkeypatch.setenv("WANDB_SWEEP_ID", "sw0")
    monkeypatch.setenv("WANDB_RUN_ID", "run0")
    sweep = load_sweep(path)
    defaults = pipeline_defaults()
    groups = {k for k in sweep["parameters"] if "." not in k and (CONF_DIR / k).is_dir()}
    for group in groups:  # a sweep never needs a `+`: the group is in the defaults list with a value
        assert defaults.get(group) is not None, (
            f"swept group '{group}' needs a non-null default in conf/pipeline.yaml"
        )
    runs = runs_covering(sweep["parameters"])
    for params in runs:
        cfg = compose_pipeline(agent_args(params))
        typed = validate(cfg)
        for key, value in params.items():
            if key in groups:
                assert cfg.hydra.runtime.choices[key] == value, key
            elif key == "hydra.run.dir":
                assert cfg.hydra.run.dir.endswith("/sw0/run0")  # one run dir per W&B run
            elif isinstance(value, float):
                assert OmegaConf.select(typed, key) == pytest.approx(value), key
            else:
                assert OmegaConf.select(typed, key) == value, key
        if sweep["metric"]["name"].startswith(("rating/", "rerank/")):
            # the evaluate stage logs the metric into the W&B run the agent created
            assert typed.logger.wandb and typed.logger.mode == "online" and typed.eval.wandb
            assert {"train", "evaluate"} <= set(typed.force)
    if "ablation" in sweep["parameters"]:  # the grid covers every ablation config there is
        assert set(sweep["parameters"]["ablation"]["values"]) == {
            p.stem for p in (CONF_DIR / "ablation").glob("*.yaml")
        }


# ---------------------------------------------------------------- Optuna


@needs_optuna
def test_optuna_preset_composes_and_its_search_space_validates():
    import optuna
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    cfg = compose_pipeline(["hparams_search=optuna"])
    sw = cfg.hydra.sweeper
    assert sw._target_.endswith(".OptunaSweeper") and cfg.hydra.mode == RunMode.MULTIRUN
    assert str(sw.direction) == "minimize" and sw.n_trials > 0
    assert sw.storage == f"sqlite:///{cfg.paths.multirun_root}/optuna.sqlite"
    assert sw.study_name == "pipeline-demo"
    sampler = instantiate(sw.sampler)
    assert isinstance(sampler, optuna.samplers.TPESampler) and sw.sampler.seed is not None
    assert str(cfg.objective) in logged_metric_names()  # what main() returns to the sweeper
    parser = OverridesParser.create()
    assert {"train.lr", "peft.r"} <= set(sw.params)
    values = {}
    for key, spec in sw.params.items():  # parsed as the sweeper parses them
        dist = create_optuna_distribution_from_override(parser.parse_override(f"{key}={spec}"))
        if key == "train.lr":
            assert "Log" in type(dist).__name__ or getattr(dist, "log", False)
        values[key] = list(dist.choices) if hasattr(dist, "choices") else [dist.low, dist.high]
    for params in runs_covering({k: {"values": v} for k, v in values.items()}):  # every choice, both bounds
        typed = validate(compose_pipeline(["hparams_search=optuna", *agent_args(params)], hydra_cfg=False))
        for key, value in params.items():
            assert OmegaConf.select(typed, key) == pytest.approx(value), key


@needs_optuna
def test_optuna_sqlite_storage_works(tmp_path):
    """optuna 2.10 (what hydra-optuna-sweeper pulls) cannot open sqlite storage under SQLAlchemy 2
    (an AssertionError in get_current_version): the `optuna` extra pins SQLAlchemy<2."""
    import optuna
    import sqlalchemy

    if optuna.__version__.startswith("2."):
        assert int(sqlalchemy.__version__.split(".")[0]) < 2
    study = optuna.create_study(
        study_name="t", storage=f"sqlite:///{tmp_path}/o.sqlite", direction="minimize"
    )
    study.optimize(lambda t: t.suggest_float("x", -1.0, 1.0) ** 2, n_trials=2)
    again = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/o.sqlite")
    assert len(again.trials) == 2 and again.best_value >= 0


# ---------------------------------------------------------------- launchers


@needs_submitit
@pytest.mark.parametrize(
    ("overrides", "devices", "nodes"),
    [
        (["trainer=deepspeed_zero2"], 8, 1),
        (["trainer=ddp", "trainer.devices=4"], 4, 1),
        (["trainer=ddp", "trainer.devices=2", "trainer.num_nodes=2"], 2, 2),
    ],
)
def test_slurm_gpu_preset_gives_one_task_per_device(overrides, devices, nodes):
    cfg = compose_pipeline(["hydra/launcher=slurm_gpu", *overrides])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith(".SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node == cfg.trainer.devices == devices
    assert launcher.nodes == cfg.trainer.num_nodes == nodes
    built = instantiate(launcher)  # as Hydra builds it: interpolations resolved against the job config
    assert built.params["tasks_per_node"] == devices and built.params["nodes"] == nodes


def sbatch_text(cfg, tmp_path: Path, monkeypatch) -> str:
    """The sbatch script submitit would submit for this launcher config (a stub `srun` on PATH stands in
    for a SLURM cluster; nothing is submitted)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "srun").write_text("#!/bin/sh\nexit 1\n")
    (stub / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub}{os.pathsep}{os.environ['PATH']}")
    params = dict(instantiate(cfg.hydra.launcher).params)
    params.pop("submitit_folder")
    executor = submitit.AutoExecutor(
        cluster="slurm", folder=tmp_path / "submitit", slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())  # the launcher's own mapping of keys
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    return executor._executor._make_submission_file_text("python -m exp3rt", "uid")


@needs_submitit
def test_slurm_gpu_sbatch_script(tmp_path, monkeypatch):
    monkeypatch.setenv("SBATCH_PARTITION", "gpu")
    monkeypatch.delenv("SBATCH_ACCOUNT", raising=False)
    text = sbatch_text(
        compose_pipeline(["hydra/launcher=slurm_gpu", "trainer=deepspeed_zero2"]), tmp_path, monkeypatch
    )
    for line in (
        "--ntasks-per-node=8",
        "--gpus-per-node=8",
        "--nodes=1",
        "--partition=gpu",
        "--cpus-per-task=8",
        "--mem-per-gpu=64G",
    ):
        assert f"#SBATCH {line}\n" in text, line
    assert "--account" not in text and "srun" in text


@needs_submitit
@pytest.mark.parametrize("entry", ["pipeline", "annotate", "baselines"])
def test_slurm_cpu_preset_composes_for_every_cpu_entry_point(entry, tmp_path, monkeypatch):
    monkeypatch.setenv("EXP3RT_CPU_PARTITION", "cpu")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=entry, overrides=["hydra/launcher=slurm_cpu"], return_hydra_config=True)
    assert cfg.hydra.launcher.tasks_per_node == 1 and cfg.hydra.launcher.gpus_per_node is None
    text = sbatch_text(cfg, tmp_path, monkeypatch)
    assert "#SBATCH --partition=cpu\n" in text and "--gpus" not in text


@needs_submitit
def test_local_preset_is_submitit_local():
    cfg = compose_pipeline(["hydra/launcher=local"])
    assert cfg.hydra.launcher._target_.endswith(".LocalLauncher") and cfg.hydra.launcher.tasks_per_node == 1


@needs_submitit
def test_trainer_slurm_tasks_per_node_is_the_slurm_jobs(monkeypatch):
    """Inside a job the SLURM launcher started, trainer.slurm_tasks_per_node is what SLURM gave the job,
    and validate() refuses a trainer.devices that differs (the launcher allocates once per multirun)."""
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE", raising=False)
    assert validate(compose_pipeline(["trainer=ddp"], hydra_cfg=False)).trainer.slurm_tasks_per_node is None
    hc = HydraConfig.instance()
    try:
        cfg = compose_pipeline(["hydra/launcher=local"])
        hc.set_config(cfg)
        assert validate(cfg).trainer.slurm_tasks_per_node is None  # not a SLURM launcher
        cfg = compose_pipeline(["hydra/launcher=slurm_gpu", "trainer=ddp"])
        hc.set_config(cfg)
        assert validate(cfg).trainer.slurm_tasks_per_node == 8  # the launcher's, before SLURM says
        monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "8")
        assert validate(cfg).trainer.slurm_tasks_per_node == 8
        monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")  # e.g. -m trainer.devices=8 on a 4-task allocation
        with pytest.raises(ConfigError, match="tasks_per_node=4, devices=8"):
            validate(cfg)
        monkeypatch.delenv("SLURM_NTASKS_PER_NODE")
        # the teacher on a one-task CPU job of a GPU preset: nothing trains there, nothing to compare
        cfg = compose_pipeline(["hydra/launcher=slurm_cpu", "trainer=ddp", "stages=[baselines,annotate]"])
        hc.set_config(cfg)
        assert validate(cfg).trainer.slurm_tasks_per_node is None
        cfg = compose_pipeline(["hydra/launcher=slurm_cpu", "trainer=ddp"])
        hc.set_config(cfg)
        with pytest.raises(ConfigError, match="tasks_per_node=1, devices=8"):
            validate(cfg)
    finally:
        hc.cfg = None


@needs_optuna
def test_a_search_is_refused_on_test_pairs_and_its_advice_runs():
    """The Optuna objective used to be the test RMSE. The preset scores validation pairs; a search told to
    score test pairs stops before any work, and the keys its message names make it valid again."""
    from exp3rt.cli.pipeline import check_search_split

    hc = HydraConfig.instance()
    try:
        cfg = compose_pipeline(["hparams_search=optuna"])
        hc.set_config(cfg)
        assert cfg.eval.split == "valid" and cfg.split.valid_ratio == 0.1
        check_search_split(cfg)
        cfg = compose_pipeline(["hparams_search=optuna", "eval.split=test", "split.valid_ratio=0"])
        hc.set_config(cfg)
        with pytest.raises(ConfigError, match="a search must not read the test set") as err:
            check_search_split(cfg)
        advice = str(err.value).split("pass ")[1].split(",")[0].split()
        assert advice == ["eval.split=valid", "split.valid_ratio=0.1"]
        cfg = compose_pipeline(["hparams_search=optuna", "eval.split=test", "split.valid_ratio=0", *advice])
        hc.set_config(cfg)
        check_search_split(cfg)
        cfg = compose_pipeline(["eval.split=test"])  # a plain run (or a grid of ablations) reports on test
        hc.set_config(cfg)
        check_search_split(cfg)
    finally:
        hc.cfg = None


def test_every_choosing_sweep_scores_validation_pairs():
    for path in SWEEPS:
        sweep = load_sweep(path)
        fixed = {k: v.get("value") for k, v in sweep["parameters"].items() if "value" in v}
        if path.stem == "ablation_grid":  # a table to report: every ablation is shown, none chosen
            assert fixed.get("eval.split", "test") == "test"
        else:
            assert fixed["eval.split"] == "valid" and fixed["split.valid_ratio"] > 0, path.name


# ---------------------------------------------------------------- the stage lock


def test_file_lock_lets_one_holder_in_at_a_time(tmp_path):
    from exp3rt.pipeline import file_lock

    path = tmp_path / "stage.lock"
    events: list[tuple[str, float]] = []
    entered = threading.Event()

    def first():
        with file_lock(path):
            events.append(("first in", time.perf_counter()))
            entered.set()
            time.sleep(0.5)
            events.append(("first out", time.perf_counter()))

    t = threading.Thread(target=first)
    t.start()
    entered.wait(5)
    with file_lock(path):  # a second open file description: flock blocks until the first lets go
        events.append(("second in", time.perf_counter()))
    t.join()
    assert [e for e, _ in events] == ["first in", "first out", "second in"]


# ---------------------------------------------------------------- real runs (slow)


def cli(
    args: list[str], tmp: Path, extra_env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_SWEEP", "WANDB_RUN", "SLURM_"))}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "WANDB_MODE": "offline",
            "HF_HUB_OFFLINE": "1",
            "EXP3RT_ARTIFACTS": str(tmp / "artifacts"),
            "EXP3RT_OUTPUTS": str(tmp / "outputs"),
            "EXP3RT_MULTIRUN": str(tmp / "multirun"),
            **(extra_env or {}),
        }
    )
    (tmp / "multirun").mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "exp3rt", *args],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def job_dirs(tmp: Path) -> list[Path]:
    (sweep,) = (tmp / "multirun" / "pipeline").iterdir()
    return sorted((d for d in sweep.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))


@pytest.mark.slow
@needs_submitit
def test_multirun_of_two_ablations_through_submitit_shares_the_teacher(tmp_path):
    proc = cli(["-m", "hydra/launcher=local", "ablation=full,no_reasoning", *TINY], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    jobs = job_dirs(tmp_path)
    assert len(jobs) == 2
    sweep_dir = jobs[0].parent
    assert any((sweep_dir / ".submitit").rglob("*_result.pkl"))  # the jobs ran as submitit processes
    metrics = [json.loads((j / "metrics.json").read_text()) for j in jobs]
    stages = [json.loads((j / "pipeline.json").read_text())["stages"] for j in jobs]
    assert sorted(m["choices"]["ablation"] for m in metrics) == ["full", "no_reasoning"]
    for m in metrics:
        assert m["rating"]["student_expected"]["rmse"] > 0
        for sweep in SWEEPS:  # the names the sweeps and Optuna read are in the real output
            assert load_sweep(sweep)["metric"]["name"] in m["flat"]
        assert compose_pipeline([], hydra_cfg=False).objective in m["flat"]
    # the jobs started together; the stage lock lets one make the shared artifacts, the other skips them
    for shared in ("baselines", "annotate"):
        assert sorted(s[shared]["status"] for s in stages) == ["ran", "skipped"], shared
        assert stages[0][shared]["dir"] == stages[1][shared]["dir"]
    assert [s["train"]["status"] for s in stages] == ["ran", "ran"]
    assert stages[0]["train"]["dir"] != stages[1]["train"]["dir"]


@pytest.mark.slow
@needs_optuna
def test_two_trial_optuna_study_of_the_pipeline(tmp_path):
    import optuna

    proc = cli(["hparams_search=optuna", "hydra.sweeper.n_trials=2", *TINY], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    study = optuna.load_study(
        study_name="pipeline-demo", storage=f"sqlite:///{tmp_path}/multirun/optuna.sqlite"
    )
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for trial, job in zip(trials, job_dirs(tmp_path), strict=True):
        metrics = json.loads((job / "metrics.json").read_text())
        flat = metrics["flat"]
        assert trial.value == pytest.approx(flat["rating/student_expected/rmse"])  # what main() returned
        ran = OmegaConf.load(job / "config.yaml")
        assert (
            ran.train.lr == pytest.approx(trial.params["train.lr"]) and ran.peft.r == trial.params["peft.r"]
        )
        # the objective read validation pairs only, never a test pair
        split_dir = Path(metrics["stages"]["data"]["split_dir"])
        parts = {p: pd.read_parquet(split_dir / f"{p}.parquet") for p in ("valid", "test")}
        preds = (Path(metrics["stages"]["evaluate"]["dir"]) / "predictions.jsonl").read_text().splitlines()
        scored = {(json.loads(line)["user_id"], json.loads(line)["item_id"]) for line in preds}
        assert metrics["protocol"]["scored_split"] == "valid" and len(scored) == 5
        assert scored <= set(zip(parts["valid"].user_id, parts["valid"].item_id, strict=True))
        assert not scored & set(zip(parts["test"].user_id, parts["test"].item_id, strict=True))
    assert trials[0].params != trials[1].params
    # the chosen trial, reported once on test: its student is reused, only the evaluation runs
    best = min(trials, key=lambda t: t.value)
    proc = cli(
        [*TINY, *(f"{k}={v}" for k, v in best.params.items()), "split.valid_ratio=0.1", "eval.split=test"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "pairs from the test split" in proc.stdout and "VALIDATION" not in proc.stdout
    assert re.search(r"train skipped", proc.stdout) and re.search(r"evaluate ran", proc.stdout)


@pytest.mark.slow
def test_a_run_as_the_wandb_agent_starts_it_logs_into_the_agents_run(tmp_path):
    """The first run of sweeps/ablation_grid.yaml, with the environment a W&B agent sets: training and
    evaluation both log into the agent's run id, and the run has its own run dir."""
    sweep = load_sweep(REPO / "sweeps" / "ablation_grid.yaml")
    args = agent_args({k: param_values(s)[0] for k, s in sweep["parameters"].items()})
    proc = cli(
        [*args, *TINY, "logger.mode=offline"],
        tmp_path,
        extra_env={"WANDB_SWEEP_ID": "sw0", "WANDB_RUN_ID": "agentrun0"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    run_dir = tmp_path / "outputs" / "sweeps" / "sw0" / "agentrun0"
    stages = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    assert sweep["metric"]["name"] in json.loads((run_dir / "metrics.json").read_text())["flat"]
    for stage in ("train", "evaluate"):
        runs = list((Path(stages[stage]["dir"]) / "wandb").glob("offline-run-*-agentrun0"))
        assert runs, f"the {stage} stage did not log into the agent's W&B run"


def test_agents_sbatch_script_is_valid_bash_and_runs_one_agent_per_task():
    path = REPO / "sweeps" / "agents.sbatch"
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    text = path.read_text()
    assert "#SBATCH --ntasks=1\n" in text and "#SBATCH --array=" in text and "wandb agent" in text
