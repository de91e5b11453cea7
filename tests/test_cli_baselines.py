"""exp3rt-baselines end to end: the console script, its table and files, clean errors, multirun, and
the real-data checks (the Amazon sample in ../shared/data; MovieLens-100k when EXP3RT_ML100K is set)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from exp3rt import CONF_DIR
from exp3rt.cli.baselines import run

SCRIPT = Path(sys.executable).parent / "exp3rt-baselines"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "exp3rt.cli.baselines"]
    env = {
        **os.environ,
        "EXP3RT_ARTIFACTS": str(cwd / "artifacts"),
        "EXP3RT_OUTPUTS": str(cwd / "outputs"),
        "EXP3RT_MULTIRUN": str(cwd / "multirun"),
    }
    return subprocess.run([*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def run_composed(tmp_path: Path, overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="baselines", overrides=[f"paths.artifacts_dir={tmp_path}/artifacts", *overrides]
        )
    return run(cfg, tmp_path / "run")


def test_console_script_prints_table_and_writes_run_dir(tmp_path):
    proc = cli(cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "SYNTHETIC data" in out and "| biased_mf" in out and "| lightgcn" in out
    runs = list((tmp_path / "outputs" / "baselines").iterdir())
    assert len(runs) == 1
    run_dir = runs[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["dataset"]["synthetic"] is True
    # on the synthetic world every learned rating baseline beats the global mean
    g = metrics["rating"]["global_mean"]["rmse"]
    for name in ("user_mean", "bias", "biased_mf"):
        assert metrics["rating"][name]["rmse"] < g, (name, metrics["rating"][name]["rmse"], g)
    assert metrics["rating"]["biased_mf"]["rmse"] < 0.95 * g
    assert {"ndcg@10", "recall@10", "hit@10", "mrr@10"} <= set(metrics["retrieval"]["lightgcn"])
    # candidates: 20 per test user, never a training item
    cand = pd.read_parquet(run_dir / "candidates" / "lightgcn.parquet")
    assert cand.groupby("user_id").size().max() == 20
    train = pd.read_parquet(Path(metrics["split"]["dir"]) / "train.parquet")
    seen = set(zip(train.user_id, train.item_id, strict=True))
    assert not any((u, i) in seen for u, i in zip(cand.user_id, cand.item_id, strict=True))
    assert (run_dir / "config.yaml").is_file() and (run_dir / "report.md").read_text().count("|") > 20


def test_bad_value_stops_before_any_work(tmp_path):
    proc = cli("dataset.duplicates=newest", cwd=tmp_path)
    assert proc.returncode != 0
    assert (
        "dataset.duplicates" in proc.stderr
        and "expected one of [keep_first, keep_latest, error]" in proc.stderr
    )
    assert not (tmp_path / "artifacts").exists()
    proc = cli("split.test_ratio=0.7", "split.valid_ratio=0.4", cwd=tmp_path)
    assert proc.returncode != 0
    assert "error: config keys 'split.test_ratio' + 'split.valid_ratio' must be below 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "artifacts").exists()


def test_missing_input_file_is_one_clear_line(tmp_path):
    proc = cli("dataset=ml100k", f"dataset.path={tmp_path}/nope.inter", cwd=tmp_path)
    assert proc.returncode != 0
    assert f"error: dataset.path does not exist: {tmp_path}/nope.inter" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_multirun_writes_one_dir_per_job(tmp_path):
    proc = cli(
        "-m",
        "split=random,per_user",
        "debug=default",
        "baselines.retrieval.models=[popularity]",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweeps = list((tmp_path / "multirun" / "baselines").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    strategies = [json.loads((p / "metrics.json").read_text())["split"]["strategy"] for p in jobs]
    assert strategies == ["random", "per_user"]


def test_split_is_reused_across_runs(tmp_path):
    first = run_composed(tmp_path, ["debug=default", "baselines.retrieval.models=[popularity]"])
    second = run_composed(
        tmp_path, ["debug=default", "baselines.retrieval.models=[popularity]", "baselines.retrieval.seed=5"]
    )
    assert first["split"]["dir"] == second["split"]["dir"]  # the training seed does not resample the split
    third = run_composed(
        tmp_path, ["debug=default", "baselines.retrieval.models=[popularity]", "split.seed=5"]
    )
    assert third["split"]["dir"] != first["split"]["dir"]


@pytest.mark.shared_data
def test_amazon_magazine_sample_end_to_end(tmp_path, shared_data):
    metrics = run_composed(
        tmp_path,
        [
            f"paths.shared_data={shared_data}",
            "dataset=amazon_magazine",
            "split=per_user",
            "baselines.retrieval.models=[popularity,bpr_mf]",
        ],
    )
    assert metrics["dataset"]["interactions"] == 1948 and metrics["dataset"]["users"] == 348
    assert metrics["data_report"]["skipped_total"] == 1  # the one review without text
    assert metrics["rating"]["bias"]["rmse"] < metrics["rating"]["global_mean"]["rmse"]


@pytest.mark.slow
def test_ml100k_through_the_generic_loader(tmp_path):
    path = os.environ.get("EXP3RT_ML100K")
    if not path or not Path(path).is_file():
        pytest.skip("set EXP3RT_ML100K to RecBole's ml-100k.inter (make ml100k) to run this test")
    metrics = run_composed(
        tmp_path,
        ["dataset=ml100k", f"dataset.path={path}", "split=random", "baselines.retrieval.models=[popularity]"],
    )
    assert metrics["dataset"]["interactions"] == 100_000
    assert metrics["split"]["stats"]["counts"]["test"] == 20_000
    assert metrics["rating"]["biased_mf"]["rmse"] <= 0.94  # Surprise's SVD: 0.934 (5-fold)
    assert metrics["rating"]["bias"]["rmse"] < metrics["rating"]["user_mean"]["rmse"]
    shutil.rmtree(tmp_path / "artifacts", ignore_errors=True)


def test_baselines_table_names_each_metric_once_when_eval_ks_holds_the_candidate_count():
    """recall@<num_candidates> is added to the table for the reranker's reach; with eval.ks=[10, 20] and
    20 candidates it used to be printed twice."""
    from exp3rt.evaluation.report import baselines_report

    metrics = {
        "dataset": {"name": "d", "interactions": 10, "users": 2, "items": 5, "scale": [1, 5]},
        "split": {
            "strategy": "random",
            "seed": 0,
            "stats": {
                "counts": {"train": 6, "valid": 2, "test": 2},
                "test_users_warm": 2,
                "test_users_cold": 0,
            },
        },
        "protocol": {"topk": {"ks": [10, 20], "num_candidates": 20, "users": 2, "relevant": "test items"}},
        "retrieval": {
            "pop": {"recall@10": 0.25, "recall@20": 0.5, "ndcg@10": 0.1, "ndcg@20": 0.2, "hit@20": 1.0}
        },
    }
    header, _, row = baselines_report(metrics).splitlines()[-3:]
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells == ["retriever", "recall@10", "recall@20", "ndcg@10", "ndcg@20", "hit@20"]
    assert [c.strip() for c in row.strip("|").split("|")] == [
        "pop",
        "0.2500",
        "0.5000",
        "0.1000",
        "0.2000",
        "1.0000",
    ]
