"""exp3rt-compare and the experiments/ recipes' aggregation.

Fast tests build run directories whose metrics.json comes from the pipeline's own ``combine`` (the real
shape, flat names included) and whose ``.hydra/`` and ``multirun.yaml`` look like Hydra's; the slow
tests run a real tiny multirun of exp3rt-pipeline through a recipe and compare it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from exp3rt.cli.compare import main
from exp3rt.compare import collect_runs, compare, flat_of, split_override
from exp3rt.pipeline import combine
from exp3rt.recipes import merge_overrides

REPO = Path(__file__).resolve().parents[1]
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
CHOICES = {
    "experiment": "demo",
    "dataset": "synthetic",
    "teacher": "extractive",
    "student": "tiny",
    "ablation": "full",
    "trainer": "cpu",
    "hydra/launcher": "basic",
}


def rating_block(student_rmse: float, mean_rmse: float = 1.8, best_rmse: float = 1.5) -> dict:
    def row(rmse, **extra):
        return {
            "n": 10,
            "rmse": rmse,
            "mae": round(rmse * 0.8, 6),
            "rmse_warm": rmse,
            "rmse_cold": rmse + 0.1,
            **extra,
        }

    student = {"scored": 10, "failures": 0, "failure_policy": "user_mean", "parse_rate": 1.0}
    return {
        "student_expected": row(student_rmse, **student),
        "student_argmax": row(student_rmse + 0.2, **student),
        "global_mean": row(mean_rmse),
        "user_mean": row(best_rmse),
        "item_mean": row(mean_rmse - 0.1),
        "bias": row(best_rmse + 0.05),
        "biased_mf": row(best_rmse + 0.02),
    }


def rerank_block(before: float, after: float, n: int = 20, seconds: float = 0.1) -> dict:
    out = {
        "users": 3,
        "retriever": "/art/baselines/x/candidates/lightgcn.parquet",
        "num_candidates": n,
        "mode": "fast",
        "seconds_per_user": seconds,
        "time_per_user_s": seconds,
    }
    for k in (1, 5, 10):
        for m in ("ndcg", "recall", "hit"):
            out[f"before/{m}@{k}"], out[f"after/{m}@{k}"] = before, after
    return out


def pipeline_metrics(
    choices: dict, overrides: list[str], student_rmse: float, rerank: dict | None = None
) -> dict:
    """metrics.json as exp3rt-pipeline writes it (through its own combine())."""
    cfg = OmegaConf.create({"experiment_name": choices.get("experiment", "demo")})
    results = {
        "evaluate": {
            "dataset": {"name": "synthetic", "synthetic": True},
            "rating": rating_block(student_rmse),
            "rerank": rerank or {},
            "protocol": {"pairs": 10, "seconds_per_pair": 0.05},
        },
        "baselines": {
            "retrieval": {"lightgcn": {"ndcg@10": 0.42, "recall@10": 0.55}, "bpr_mf": {"ndcg@10": 0.15}}
        },
        "annotate": {
            "usage": {
                "calls": 1438,
                "prompt_tokens": 388899,
                "completion_tokens": 102801,
                "cost_usd": 0.0,
                "wall_s": 0.7,
            },
            "directory": "/art/annotations/x",
        },
        "train": {"global_step": 20, "seconds": 2.6},
    }
    return combine(cfg, {"stages": {}}, results, {"choices": choices, "overrides": overrides})


def write_job(
    d: Path,
    choices: dict,
    overrides: list[str],
    metrics: dict | None = None,
    config: dict | None = None,
    log_line: str | None = None,
) -> Path:
    """A Hydra job dir: .hydra/{hydra,overrides,config}.yaml, config.yaml, and metrics.json unless it
    crashed."""
    (d / ".hydra").mkdir(parents=True, exist_ok=True)
    (d / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": choices}, "overrides": {"task": overrides}}})
    )
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (d / "config.yaml").write_text(
        yaml.safe_dump(config or {"train": {"lr": 0.003}, "ablation": {"name": choices.get("ablation")}})
    )
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if log_line:
        (d / "pipeline.log").write_text(
            f"[2026-01-01 00:00:00,000][exp3rt.pipeline][INFO] - stage baselines: ran\n{log_line}\n"
        )
    return d


def write_multirun(root: Path, task_overrides: list[str], params: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text(
        yaml.safe_dump(
            {
                "hydra": {
                    "sweeper": {"_target_": BASIC_SWEEPER, "max_batch_size": None, "params": params},
                    "sweep": {"dir": str(root), "subdir": "${hydra.job.num}"},
                    "overrides": {
                        "hydra": [f"hydra.sweep.dir={root}", "hydra.mode=MULTIRUN"],
                        "task": task_overrides,
                    },
                }
            }
        )
    )
    return root


def ablation_sweep(root: Path, rmses: dict[str, float | None], rerank: bool = False) -> Path:
    """A finished multirun over `ablation=`, one job per entry; None makes a crashed job."""
    base = ["debug=default", "trainer.max_steps=10", "progress=False"]
    write_multirun(root, [*base, "ablation=" + ",".join(rmses)])
    for i, (ab, rmse) in enumerate(rmses.items()):
        ov = [*base, f"ablation={ab}"]
        ch = {**CHOICES, "ablation": ab, "debug": "default"}
        m = (
            pipeline_metrics(ch, ov, rmse, rerank_block(0.3, 0.35 + i / 100) if rerank else None)
            if rmse is not None
            else None
        )
        write_job(
            root / str(i),
            ch,
            ov,
            m,
            log_line=None
            if m
            else "[2026-01-01 00:00:01,000][exp3rt.pipeline][ERROR] - error: config key 'ablation' broke",
        )
    return root


def table_rows(md: str, heading: str) -> list[str]:
    """The rows (not the header) of the first markdown table after ``heading``."""
    lines = md.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    block = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        block.append(line)
    return block[2:]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------------------- the table


def test_multirun_table_rows_labels_and_files(tmp_path, capsys, monkeypatch):
    sweep = ablation_sweep(tmp_path / "mr", {"full": 1.25, "no_reasoning": 1.40})
    monkeypatch.chdir(tmp_path)
    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ablation=")]
    assert [r.split("|")[1].strip() for r in rows] == ["ablation=full", "ablation=no_reasoning"]
    assert "| 1.2500" in rows[0] and "| 1.4000" in rows[1]  # student RMSE
    assert "user_mean" in rows[0]  # the best baseline by name
    assert "status" not in out.splitlines()[1]  # no failed run: no status column
    # written into the multirun dir by default
    for name in ("compare.md", "compare.json", "compare.png"):
        assert (sweep / name).is_file() and (sweep / name).stat().st_size > 0, name
    data = json.loads((sweep / "compare.json").read_text())
    assert data["total"] == 2 and data["failed"] == 0 and data["label_keys"] == ["ablation"]
    assert data["runs"][1]["values"]["rating/student_expected/rmse"] == pytest.approx(1.40)
    assert data["runs"][0]["values"]["rating/best_baseline/rmse"] == pytest.approx(1.5)
    assert data["runs"][0]["values"]["rating/global_mean/rmse"] == pytest.approx(1.8)
    assert (sweep / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (sweep / "compare.md").read_text()
    assert "ablation=no_reasoning" in md and str(sweep) in md
    # the same settings in every run do not label anything
    assert "debug=" not in md and "trainer.max_steps" not in md


def test_missing_metric_is_a_dash_never_zero(tmp_path, capsys):
    a = write_job(
        tmp_path / "a",
        CHOICES,
        ["eval.rerank=true"],
        pipeline_metrics(CHOICES, ["eval.rerank=true"], 1.2, rerank_block(0.30, 0.36)),
    )
    b = write_job(
        tmp_path / "b", CHOICES, ["eval.rerank=false"], pipeline_metrics(CHOICES, ["eval.rerank=false"], 1.3)
    )
    assert (
        main([str(a), str(b), "--out", str(tmp_path / "cmp"), "--plot", str(tmp_path / "plots" / "bars.png")])
        == 0
    )
    assert (tmp_path / "plots" / "bars.png").read_bytes()[:4] == b"\x89PNG" and not (
        tmp_path / "cmp" / "compare.png"
    ).exists()
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| run"))
    assert "rerank/before/ndcg@10" in header and "rerank/after/ndcg@10" in header
    row_b = next(line for line in out.splitlines() if line.startswith("| eval.rerank=false"))
    cells = [c.strip() for c in row_b.strip("|").split("|")]
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cells[cols.index("rerank/after/ndcg@10")] == "–"
    assert cells[cols.index("rerank/before/ndcg@10")] == "–"
    assert "0.0000" not in row_b
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert data["runs"][1]["values"]["rerank/after/ndcg@10"] is None
    assert data["runs"][0]["values"]["rerank/after/ndcg@10"] == pytest.approx(0.36)


def test_unknown_metric_stays_a_column_of_dashes_with_a_hint(tmp_path, capsys):
    sweep = ablation_sweep(tmp_path / "mr", {"full": 1.25, "no_reasoning": 1.40})
    rc = main(
        [
            str(sweep),
            "--metrics",
            "rating/student_expected/rmsee,rerank/after/*@10",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 0
    captured = capsys.readouterr()
    assert "did you mean rating/student_expected/rmse" in captured.err
    assert "no metric matches 'rerank/after/*@10'" in captured.err  # no run reranked
    data = json.loads((tmp_path / "o" / "compare.json").read_text())
    assert data["metrics"] == ["rating/student_expected/rmsee"]
    assert all(r["values"]["rating/student_expected/rmsee"] is None for r in data["runs"])


def test_glob_metrics_and_by_keys_from_config(tmp_path, capsys):
    sweep = ablation_sweep(tmp_path / "mr", {"full": 1.25, "no_reasoning": 1.40}, rerank=True)
    assert (
        main(
            [
                str(sweep),
                "--metrics",
                "rerank/after/ndcg@*",
                "--by",
                "ablation,train.lr,nope",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "o" / "compare.json").read_text())
    assert data["metrics"] == ["rerank/after/ndcg@1", "rerank/after/ndcg@5", "rerank/after/ndcg@10"]
    assert [r["label"] for r in data["runs"]] == [
        "ablation=full, train.lr=0.003, nope=–",
        "ablation=no_reasoning, train.lr=0.003, nope=–",
    ]


def test_crashed_job_is_listed_and_counted(tmp_path, capsys):
    sweep = ablation_sweep(tmp_path / "mr", {"full": 1.25, "no_reasoning": None, "raw_reviews": 1.5})
    assert main([str(sweep)]) == 1  # the table is written, the exit status says something failed
    out = capsys.readouterr().out
    assert "3 runs: 2 finished, 1 failed" in out
    row = next(line for line in out.splitlines() if line.startswith("| ablation=no_reasoning"))
    assert "| failed" in row and row.count("–") >= 5
    assert f"failed: {sweep / '1'}" in out and "config key 'ablation' broke" in out  # its path and why
    data = json.loads((sweep / "compare.json").read_text())
    assert (data["total"], data["finished"], data["failed"]) == (3, 2, 1)
    failed = [r for r in data["runs"] if r["status"] == "failed"]
    assert failed[0]["source"] == str(sweep / "1") and failed[0]["overrides"][-1] == "ablation=no_reasoning"
    assert "Failed or not started: 1 of 3 runs" in (sweep / "compare.md").read_text()


def test_jobs_the_sweep_never_started_are_listed(tmp_path, capsys):
    # the basic launcher stops at the first crash: job 2 of ablation=full,no_reasoning,raw_reviews never ran
    sweep = ablation_sweep(tmp_path / "mr", {"full": 1.25, "no_reasoning": None})
    write_multirun(
        sweep,
        ["debug=default", "trainer.max_steps=10", "progress=False", "ablation=full,no_reasoning,raw_reviews"],
    )
    assert main([str(sweep)]) == 1
    out = capsys.readouterr().out
    assert "3 runs: 1 finished, 2 failed or not started" in out
    assert f"not started: {sweep / '2'}" in out and "ablation=raw_reviews" in out


def test_sweep_params_from_an_experiment_preset_count_too(tmp_path):
    # experiment=ablations puts its grid in hydra.sweeper.params rather than on the command line
    root = write_multirun(
        tmp_path / "mr", ["debug=default"], params={"ablation": "full,no_reasoning,raw_reviews"}
    )
    write_job(
        root / "0",
        {**CHOICES, "ablation": "full"},
        ["debug=default", "ablation=full"],
        pipeline_metrics(CHOICES, ["debug=default", "ablation=full"], 1.2),
    )
    runs = collect_runs([root])
    assert [r.status for r in runs] == ["ok", "not started", "not started"]
    assert runs[2].overrides == ["ablation=raw_reviews", "debug=default"]


def test_directory_without_runs_is_a_failed_entry_and_a_missing_one_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path)]) == 1
    assert "no metrics.json and no run directories" in capsys.readouterr().out
    assert main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([])  # neither run dirs nor --wandb


def test_evaluate_and_baselines_run_dirs(tmp_path, capsys):
    """metrics.json of exp3rt-evaluate (no flat key) and exp3rt-baselines (rating + retrieval only)."""
    ev = tmp_path / "outputs" / "evaluate" / "t1"
    write_job(
        ev,
        {"eval": "default"},
        ["run_dir=outputs/train/a"],
        {"task": "evaluate", "rating": rating_block(1.1), "rerank": rerank_block(0.2, 0.25)},
    )
    flat = flat_of(json.loads((ev / "metrics.json").read_text()))
    assert flat["rating/student_expected/rmse"] == pytest.approx(1.1)
    assert flat["rerank/after/ndcg@10"] == pytest.approx(0.25)
    assert flat["rating/best_baseline/mae"] == pytest.approx(1.2)  # user_mean's MAE (1.5 * 0.8)

    base = tmp_path / "outputs" / "baselines"
    for i, split in enumerate(("random", "per_user")):
        m = {
            "task": "baselines",
            "rating": {k: v for k, v in rating_block(1.0).items() if not k.startswith("student")},
            "retrieval": {"lightgcn": {"ndcg@10": 0.4 + i / 10}},
        }
        write_job(base / str(i), {"split": split}, [f"split={split}"], m)
    assert main([str(base), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| run"))
    # no student in baselines runs: the defaults that exist, then nothing else is invented
    assert (
        "student_expected" not in header and "global_mean/rmse" in header and "best_baseline/rmse" in header
    )
    assert "| split=random" in out and "| split=per_user" in out


def test_same_settings_twice_get_distinct_labels(tmp_path):
    for name in ("x", "y"):
        write_job(tmp_path / name, CHOICES, ["seed=0"], pipeline_metrics(CHOICES, ["seed=0"], 1.2))
    cmp = compare(collect_runs([tmp_path / "x", tmp_path / "y"]))
    assert [r.label for r in cmp.runs] == ["demo [x]", "demo [y]"]


def test_override_parsing_and_merging():
    assert split_override("+eval.rerank=True") == ("eval.rerank", "true")
    assert split_override("~logger") == ("logger", "<deleted>")
    assert merge_overrides(["a=1", "ablation=full,no_reasoning"], ["b=2"], ["ablation=full"]) == [
        "a=1",
        "b=2",
        "ablation=full",
    ]


# --------------------------------------------------------------------------------------------- W&B


class FakeRun:
    def __init__(self, rid, name, summary, config, tags, state="finished"):
        self.id, self.name, self.summary_metrics, self.config, self.tags, self.state = (
            rid,
            name,
            summary,
            config,
            tags,
            state,
        )
        self.path = ["team", "exp3rt", rid]
        self.url = f"https://wandb.ai/team/exp3rt/runs/{rid}"


class FakeApi:
    """Stands in for wandb.Api: records the query, returns runs shaped like the public API's."""

    def __init__(self, runs):
        self._runs, self.calls = runs, []

    def runs(self, path, filters=None, **kw):
        self.calls.append((path, filters))
        return iter(self._runs)


def test_wandb_runs_through_an_injected_api(tmp_path, capsys):
    def summary(rmse, after=None):
        s = {
            "rating/student_expected/rmse": rmse,
            "rating/global_mean/rmse": 1.8,
            "rating/user_mean/rmse": 1.5,
            "_step": 20,
            "_runtime": 33.0,
            "_wandb": {"runtime": 33},
            "trainer/global_step": 20,
        }
        if after is not None:
            s["rerank/after/ndcg@10"] = after
        return s

    api = FakeApi(
        [
            FakeRun(
                "a1",
                "tiny-full-synthetic",
                summary(1.2, 0.4),
                {"experiment_name": {"value": "ablations"}, "teacher": {"name": "extractive"}},
                ["dataset:synthetic", "teacher:extractive", "student:tiny", "ablation:full"],
            ),
            FakeRun(
                "b2",
                "tiny-no_reasoning-synthetic",
                summary(1.3),
                {"experiment_name": "ablations", "teacher": {"name": "extractive"}},
                ["dataset:synthetic", "teacher:extractive", "student:tiny", "ablation:no_reasoning"],
            ),
            FakeRun(
                "c3",
                "tiny-raw_reviews-synthetic",
                {"_step": 3},
                {"experiment_name": "ablations"},
                ["dataset:synthetic", "teacher:extractive", "student:tiny", "ablation:raw_reviews"],
                state="crashed",
            ),
        ]
    )
    rc = main(["--wandb", "team/exp3rt", "--group", "ablations", "--out", str(tmp_path)], api=api)
    assert rc == 1  # one run crashed
    assert api.calls == [("team/exp3rt", {"group": "ablations"})]
    out = capsys.readouterr().out
    assert "| ablation=full" in out and "| ablation=no_reasoning" in out and "| ablation=raw_reviews" in out
    data = json.loads((tmp_path / "compare.json").read_text())
    by_label = {r["label"]: r for r in data["runs"]}
    assert by_label["ablation=full"]["values"]["rerank/after/ndcg@10"] == pytest.approx(0.4)
    assert by_label["ablation=no_reasoning"]["values"]["rerank/after/ndcg@10"] is None
    assert by_label["ablation=full"]["values"]["rating/best_baseline/rmse"] == pytest.approx(1.5)
    assert by_label["ablation=raw_reviews"]["status"] == "crashed" and data["failed"] == 1
    assert by_label["ablation=full"]["source"] == "team/exp3rt/a1"
    assert "_step" not in data["metrics"] and (tmp_path / "compare.png").is_file()
    # --by reads the run config (W&B stores it nested) when no tag names the key
    rc = main(
        ["--wandb", "team/exp3rt", "--by", "teacher,experiment_name", "--out", str(tmp_path)],
        api=FakeApi(api._runs[:2]),
    )
    assert rc == 0
    assert [r["label"] for r in json.loads((tmp_path / "compare.json").read_text())["runs"]] == [
        "teacher=extractive, experiment_name=ablations [a1]",
        "teacher=extractive, experiment_name=ablations [b2]",
    ]


# ------------------------------------------------------------------------------------------ recipes


def test_ablations_recipe_aggregates_a_finished_multirun(tmp_path):
    sweep = ablation_sweep(
        tmp_path / "mr",
        {"full": 1.25, "no_reasoning": 1.40, "no_user_profile": None, "raw_reviews": 1.10},
        rerank=True,
    )
    mod = load_script("ablations")
    cmp, paths = mod.RECIPE.aggregate([sweep], tmp_path / "results")
    assert paths["markdown"] == tmp_path / "results" / "ablations.md" and paths["plot"].is_file()
    md = paths["markdown"].read_text()
    assert "## Student RMSE per ablation" in md
    rows = [line.split("|")[1].strip() for line in table_rows(md, "## Student RMSE per ablation")]
    assert rows == ["full", "no_reasoning", "raw_reviews"]
    assert "no_reasoning: RMSE +0.1500 vs full" in md and "raw_reviews: RMSE -0.1500 vs full" in md
    assert f"failed: {sweep / '2'}" in md  # the crashed ablation is named, not dropped
    data = json.loads(paths["json"].read_text())
    assert data["rmse_vs_full"]["no_reasoning"] == pytest.approx(0.15) and data["failed"] == 1


def test_topk_and_efficiency_and_rating_recipes_views(tmp_path):
    # topk: two retrievers, rows first stage / reranked for each
    root = write_multirun(tmp_path / "topk", ["eval.rerank=true", "eval.rerank_retriever=lightgcn,bpr_mf"])
    for i, r in enumerate(("lightgcn", "bpr_mf")):
        ov = ["eval.rerank=true", f"eval.rerank_retriever={r}"]
        write_job(
            root / str(i),
            CHOICES,
            ov,
            pipeline_metrics(CHOICES, ov, 1.2, rerank_block(0.3 - i / 10, 0.35 - i / 10)),
        )
    _, paths = load_script("topk_reranking").RECIPE.aggregate([root], tmp_path / "res_topk")
    md = paths["markdown"].read_text()
    assert "| lightgcn | first stage | 0.3000" in md and "| bpr_mf   | reranked    | 0.2500" in md

    # efficiency: the seconds-per-user ratio of all items over the top-20
    root = write_multirun(tmp_path / "eff", ["eval.rerank=true", "eval.num_candidates=20,1000"])
    for i, (n, s) in enumerate(((20, 0.5), (1000, 12.5))):
        ov = ["eval.rerank=true", f"eval.num_candidates={n}"]
        write_job(
            root / str(i),
            CHOICES,
            ov,
            pipeline_metrics(CHOICES, ov, 1.2, rerank_block(0.3, 0.3, n=n, seconds=s)),
        )
    _, paths = load_script("efficiency").RECIPE.aggregate([root], tmp_path / "res_eff")
    data = json.loads(paths["json"].read_text())
    assert data["seconds_per_user_ratio"] == pytest.approx(25.0)
    md = paths["markdown"].read_text()
    assert "25.0× the time per user" in md and "422 s vs 7.31 s = 57.7×" in md
    assert "| top-20 " in md and "| all unseen items " in md

    # rating prediction: one run, rows are the models
    _, paths = load_script("rating_prediction").RECIPE.aggregate([root / "0"], tmp_path / "res_rating")
    md = paths["markdown"].read_text()
    for model in ("student_expected", "student_argmax", "global_mean", "biased_mf"):
        assert f"| {model}" in md
    assert "Scored on: test pairs." in md  # runs without protocol.scored_split predate it: test pairs


def test_recipe_commands_merge_overrides_and_skip_unavailable_teachers(tmp_path, monkeypatch):
    abl = load_script("ablations").RECIPE
    cmd, _ = abl.command("demo", ["ablation=full,no_reasoning", "trainer.max_steps=50"], tmp_path / "s")
    assert cmd[:4] == [sys.executable, "-m", "exp3rt", "-m"]
    assert cmd.count("ablation=full,no_reasoning") == 1 and not any(
        c.startswith("ablation=full,no_reasoning,") for c in cmd
    )
    assert "trainer.max_steps=50" in cmd and "trainer.max_steps=300" not in cmd
    assert cmd[-1] == f"hydra.sweep.dir={tmp_path / 's'}"
    cmd, _ = abl.command("paper", ["experiment=paper_imdb", "hydra/launcher=slurm_gpu"], tmp_path / "s")
    assert not any(c.startswith("trainer.max_steps") for c in cmd) and "hydra/launcher=slurm_gpu" in cmd

    teacher = load_script("teacher_comparison")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("EXP3RT_ARTIFACTS", str(tmp_path / "art"))
    cmd, notes = teacher.RECIPE.command("quick", [], tmp_path / "s")
    assert "teacher=extractive" in cmd
    assert any("OPENAI_API_KEY is not set" in n for n in notes) and any("no model folder" in n for n in notes)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    cmd, notes = teacher.RECIPE.command("quick", [f"teacher.model_path={model}"], tmp_path / "s")
    assert "teacher=extractive,hf_local,gpt35_turbo" in cmd and notes == []


# ---------------------------------------------------------------------------------- real runs (slow)


def _env(tmp: Path) -> dict:
    return {
        **os.environ,
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "EXP3RT_ARTIFACTS": str(tmp / "artifacts"),
        "EXP3RT_OUTPUTS": str(tmp / "outputs"),
        "EXP3RT_MULTIRUN": str(tmp / "multirun"),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }


@pytest.mark.slow
def test_real_multirun_through_a_recipe_then_exp3rt_compare(tmp_path):
    """A real tiny multirun of exp3rt-pipeline launched by the ablations recipe (quick preset), its table,
    then exp3rt-compare on the same sweep dir, as a user would call both."""
    env = _env(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "experiments" / "ablations.py"),
            "--preset",
            "quick",
            "--out",
            str(tmp_path / "results"),
            "ablation=full,no_reasoning",
            "eval.rerank=false",
            "trainer.max_steps=10",
            "eval.max_pairs=5",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = (tmp_path / "results" / "ablations.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table_rows(md, "## Student RMSE per ablation")}
    assert set(rows) == {"full", "no_reasoning"}
    assert all("–" not in line.split("|")[2] for line in rows.values())  # both have a student RMSE
    assert (tmp_path / "results" / "ablations.png").stat().st_size > 1000
    sweeps = list((tmp_path / "multirun" / "experiments" / "ablations").iterdir())
    assert len(sweeps) == 1 and (sweeps[0] / "multirun.yaml").is_file()

    script = Path(sys.executable).parent / "exp3rt-compare"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "exp3rt.cli.compare"]
    proc = subprocess.run(
        [*cmd, str(sweeps[0]), "--metrics", "rating/student_expected/rmse,rating/*_mean/rmse"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((sweeps[0] / "compare.json").read_text())
    assert [r["label"] for r in data["runs"]] == ["ablation=full", "ablation=no_reasoning"]
    assert data["metrics"] == [
        "rating/student_expected/rmse",
        "rating/global_mean/rmse",
        "rating/user_mean/rmse",
        "rating/item_mean/rmse",
    ]
    real = json.loads((sweeps[0] / "0" / "metrics.json").read_text())
    assert data["runs"][0]["values"]["rating/student_expected/rmse"] == pytest.approx(
        real["flat"]["rating/student_expected/rmse"]
    )
    # the baselines are scored on the same pairs in both runs
    assert (
        data["runs"][0]["values"]["rating/global_mean/rmse"]
        == data["runs"][1]["values"]["rating/global_mean/rmse"]
    )


def test_real_multirun_with_a_failing_job(tmp_path):
    """Both jobs are rejected by validation (their run dirs have .hydra/ and a log, no metrics.json); the
    first failure does not stop the second job. exp3rt-compare names both, with the reason."""
    env = _env(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "exp3rt",
            "-m",
            "debug=default",
            "progress=false",
            "split.valid_ratio=0.9,0.95",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0
    proc = subprocess.run(
        [sys.executable, "-m", "exp3rt.cli.compare", str(tmp_path / "sweep")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "2 runs: 0 finished, 2 failed or not started" in proc.stdout
    assert (
        f"failed: {tmp_path / 'sweep' / '0'} (split.valid_ratio=0.9) — config keys 'split.test_ratio'"
        in proc.stdout
    )
    assert (
        f"failed: {tmp_path / 'sweep' / '1'} (split.valid_ratio=0.95) — config keys 'split.test_ratio'"
        in proc.stdout
    )


def test_a_dry_run_and_a_half_finished_run_say_so(tmp_path, capsys):
    dry = write_job(tmp_path / "runs" / "dry", CHOICES, ["dry_run=true"])
    (dry / "pipeline.json").write_text(json.dumps({"task": "pipeline", "dry_run": True}))
    half = write_job(tmp_path / "runs" / "half", CHOICES, ["trainer.max_steps=5"])
    (half / "pipeline.json").write_text(
        json.dumps(
            {
                "task": "pipeline",
                "stages": {
                    "data": {"status": "ready"},
                    "baselines": {"status": "ran"},
                    "annotate": {"status": "skipped"},
                },
            }
        )
    )
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"dry run: {dry}" in out and "nothing was trained" in out
    assert f"failed: {half}" in out and "[stages done: data, baselines, annotate]" in out


def test_teacher_bill_comes_from_the_annotations_the_run_used(tmp_path):
    """A run that reused finished annotations sent nothing itself; the teacher columns still show what
    making those annotations cost (the stages' usage records), and fall back to the run's own usage."""
    ann = tmp_path / "annotations" / "extractive-abc"
    ann.mkdir(parents=True)
    for stage, calls, cost in (("extract", 450, 0.25), ("rationale", 450, 0.5)):
        (ann / f"{stage}.usage.json").write_text(
            json.dumps(
                {
                    "stage": stage,
                    "usage": {
                        "calls": calls,
                        "prompt_tokens": calls * 100,
                        "completion_tokens": calls * 10,
                        "cost_usd": cost,
                        "wall_s": 1.0,
                    },
                }
            )
        )
    m = pipeline_metrics(CHOICES, [], 1.2)
    assert flat_of(m)["teacher/calls"] == 1438  # the directory is not here: the run's own record
    m["teacher"] = {"usage": {"calls": 0, "cost_usd": 0.0}, "directory": str(ann)}
    flat = flat_of(m)
    assert flat["teacher/calls"] == 900 and flat["teacher/cost_usd"] == pytest.approx(0.75)
    assert (
        flat["teacher/prompt_tokens"] == 90000 and flat["efficiency/teacher_calls"] == 1438
    )  # the run's own


def test_the_table_says_which_pairs_each_run_was_scored_on_and_warns_when_they_differ(tmp_path):
    for i, part in enumerate(("valid", "test")):
        m = pipeline_metrics(CHOICES, [f"eval.split={part}"], 1.2 + i / 10)
        m["protocol"]["scored_split"] = part
        write_job(tmp_path / "mr" / str(i), CHOICES, [f"eval.split={part}"], m)
    cmp = compare(collect_runs([tmp_path / "mr"]), metrics=["rating/student_expected/rmse"])
    assert "scored on" in cmp.header()
    assert sorted(row[cmp.header().index("scored on")] for row in cmp.rows()) == ["test", "valid"]
    assert any("scored on different pairs (test, valid)" in w for w in cmp.warnings)
