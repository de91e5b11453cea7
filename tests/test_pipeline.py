"""exp3rt-pipeline: stage skipping by fingerprint, resume after a crash, the combined metrics.json,
dry runs of every experiment preset, and the demo end to end (slow)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from exp3rt import CONF_DIR
from exp3rt.config import validate

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
# a small, fast pipeline: the debug world, a short training, a few pairs and users
FAST = [
    "debug=default",
    "trainer.max_steps=12",
    "eval.max_pairs=8",
    "eval.rerank_max_users=3",
    "eval.max_new_tokens=24",
    "progress=false",
    "sft.tasks=[rating]",
    "~sft.task_weights.rating_direct",
    "eval.rerank_mode=full",
]  # the reasoning student


def compose_pipeline(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="pipeline", overrides=overrides)


def run_in_process(overrides: list[str], out_dir: Path) -> dict:
    from exp3rt.cli.pipeline import run

    return run(compose_pipeline(overrides), out_dir)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One finished fast pipeline whose artifacts the tests below reuse (each test then only runs the
    stages its overrides change)."""
    root = tmp_path_factory.mktemp("pipeline")
    mp = pytest.MonkeyPatch()
    for var, sub in (
        ("EXP3RT_ARTIFACTS", "artifacts"),
        ("EXP3RT_OUTPUTS", "outputs"),
        ("EXP3RT_MULTIRUN", "multirun"),
    ):
        mp.setenv(var, str(root / sub))
    mp.setenv("WANDB_MODE", "offline")
    try:
        first = run_in_process(FAST, root / "run1")
        yield root, first
    finally:
        mp.undo()


@pytest.fixture
def in_shared(shared, monkeypatch):
    root, _ = shared
    for var, sub in (
        ("EXP3RT_ARTIFACTS", "artifacts"),
        ("EXP3RT_OUTPUTS", "outputs"),
        ("EXP3RT_MULTIRUN", "multirun"),
    ):
        monkeypatch.setenv(var, str(root / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    return root


def test_first_run_runs_every_stage_and_writes_one_metrics_file(shared):
    root, first = shared
    status = {s: r["status"] for s, r in first["stages"].items()}
    assert status == {
        "data": "ready",
        "baselines": "ran",
        "annotate": "ran",
        "train": "ran",
        "evaluate": "ran",
    }
    saved = json.loads((root / "run1" / "metrics.json").read_text())
    assert saved["flat"]["rating/student_expected/rmse"] == pytest.approx(
        first["rating"]["student_expected"]["rmse"]
    )
    assert saved["rating"]["global_mean"]["n"] == 8 and saved["rating"]["student_expected"]["n"] == 8
    gen = saved["generation"]  # FAST sets eval.max_new_tokens=24, below the tiny student's training answers
    assert gen["max_new_tokens"] == 24 and sum(gen["finish"].values()) == 8
    assert saved["flat"]["generation/cut"] == gen["cut"] == gen["finish"].get("length", 0)
    assert "after/ndcg@10" in saved["rerank"] and "lightgcn" in saved["retrieval"]
    assert saved["rerank"]["retriever"].endswith(
        "candidates/lightgcn.parquet"
    )  # the baselines stage's own file
    assert saved["stages"]["train"]["dir"].startswith(str(root / "artifacts" / "students"))
    assert (
        saved["teacher"]["usage"]["calls"] > 0
        and saved["efficiency"]["teacher_calls"] == saved["teacher"]["usage"]["calls"]
    )
    assert (root / "run1" / "report.md").read_text().count("## Pipeline stages") == 1
    assert (root / "run1" / "rating_distributions.png").stat().st_size > 0
    assert saved["example"]["reasoning"] and saved["example"]["user_id"]
    from exp3rt.cli.pipeline import summary

    assert saved["protocol"]["device"] in ("cpu", "cuda") and saved["protocol"]["merge_lora"] is True
    assert f"student on {saved['protocol']['device']}" in summary(saved, root / "run1").splitlines()[0]


def test_same_inputs_skip_every_stage_with_the_same_numbers(shared, in_shared, capsys):
    _, first = shared
    second = run_in_process(FAST, in_shared / "run2")
    assert {s: r["status"] for s, r in second["stages"].items() if s != "data"} == {
        "baselines": "skipped",
        "annotate": "skipped",
        "train": "skipped",
        "evaluate": "skipped",
    }
    assert second["flat"] == first["flat"]
    out = capsys.readouterr().out
    for text in ("| student_expected", "| global_mean", "parse rate", "reranked", "Example:", "report:"):
        assert text in out
    # cosmetic keys (logging cadence, W&B rows) do not change any fingerprint
    third = run_in_process(FAST + ["trainer.log_every_n_steps=3", "eval.wandb_rows=5"], in_shared / "run3")
    assert {third["stages"][s]["status"] for s in ("baselines", "annotate", "train", "evaluate")} == {
        "skipped"
    }


def test_an_evaluation_setting_reruns_only_evaluate(in_shared):
    m = run_in_process(FAST + ["eval.failure_policy=global_mean"], in_shared / "ev")
    assert [m["stages"][s]["status"] for s in ("baselines", "annotate", "train", "evaluate")] == [
        "skipped",
        "skipped",
        "skipped",
        "ran",
    ]


def test_a_training_setting_retrains_and_reevaluates(shared, in_shared, monkeypatch):
    import gc

    import exp3rt.pipeline as pipeline
    from exp3rt.student.lightning import StudentModule

    alive = []  # trained modules still in memory when evaluation starts (on a GPU: the training's memory)
    real = pipeline._evaluate
    monkeypatch.setattr(
        pipeline,
        "_evaluate",
        lambda *a, **k: (
            alive.append(sum(isinstance(o, StudentModule) for o in gc.get_objects())) or real(*a, **k)
        ),
    )
    m = run_in_process(
        [o for o in FAST if not o.startswith("trainer.max_steps")] + ["trainer.max_steps=6"], in_shared / "tr"
    )
    assert [m["stages"][s]["status"] for s in ("baselines", "annotate", "train", "evaluate")] == [
        "skipped",
        "skipped",
        "ran",
        "ran",
    ]
    assert alive == [0]
    assert m["stages"]["train"]["global_step"] == 6
    assert m["stages"]["train"]["dir"] != shared[1]["stages"]["train"]["dir"]


def test_stage_selection_and_force(in_shared):
    b = run_in_process(FAST + ["stages=[evaluate]"], in_shared / "b")  # finds the student by its fingerprint
    assert list(b["stages"]) == ["data", "evaluate"] and b["stages"]["evaluate"]["status"] == "skipped"
    c = run_in_process(FAST + ["stages=[train,evaluate]", "force=[evaluate]"], in_shared / "c")
    assert c["stages"]["evaluate"]["status"] == "ran" and c["stages"]["train"]["status"] == "skipped"


def test_a_run_without_the_evaluate_stage_shows_the_baselines_and_no_objective_error(
    in_shared, capsys, caplog
):
    """stages=[baselines,annotate] (the CPU half before a GPU job) prints the baselines on the test split,
    says no student was evaluated, and is not reported as a sweep error; a finished evaluation whose
    metrics lack the objective (a misspelt name) is."""
    from exp3rt.cli.pipeline import objective_value

    overrides = FAST + ["stages=[baselines,annotate]"]
    m = run_in_process(overrides, in_shared / "cpu_half")
    out = capsys.readouterr().out
    assert "no student evaluated in this run" in out and "?" not in out.splitlines()[0]
    table = [line for line in out.splitlines() if line.startswith("| global_mean")]
    assert len(table) == 1 and float(table[0].split("|")[2]) == pytest.approx(
        m["baselines_rating"]["global_mean"]["rmse"], abs=1e-3
    )
    assert "stages: data ready" in out and "baselines skipped" in out and "annotate skipped" in out
    cfg = compose_pipeline(overrides)
    with caplog.at_level("INFO", logger="exp3rt.pipeline"):
        assert objective_value(cfg, m) is None
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert any("evaluate stage was not part of this run" in r.getMessage() for r in caplog.records)
    caplog.clear()
    full = run_in_process(FAST + ["stages=[evaluate]"], in_shared / "eval_only")
    assert objective_value(cfg, full) == pytest.approx(full["flat"][cfg.objective])
    with caplog.at_level("INFO", logger="exp3rt.pipeline"):
        assert objective_value(compose_pipeline(FAST + ["objective=rating/student/rmsee"]), full) is None
    assert [r for r in caplog.records if r.levelname == "ERROR" and "rmsee" in r.getMessage()]


def test_evaluate_without_a_student_says_what_to_run(in_shared):
    with pytest.raises(FileNotFoundError, match="run the train stage first"):
        run_in_process(FAST + ["stages=[evaluate]", "train.seed=7"], in_shared / "x")


def test_unknown_stage_is_rejected_by_name(env):
    from exp3rt.config import ConfigError

    with pytest.raises(ConfigError, match="unknown stage.*'trian'"):
        run_in_process(FAST + ["stages=[trian]"], env / "x")


def test_crash_in_evaluate_resumes_from_there(in_shared, monkeypatch):
    import exp3rt.pipeline as P

    overrides = FAST + ["eval.seed=3"]
    with monkeypatch.context() as m:
        m.setattr(P, "_evaluate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("evaluation crashed")))
        with pytest.raises(RuntimeError, match="evaluation crashed"):
            run_in_process(overrides, in_shared / "crash")
    record = json.loads((in_shared / "crash" / "pipeline.json").read_text())
    assert "evaluate" not in record["stages"] and record["stages"]["train"]["status"] == "skipped"
    again = run_in_process(overrides, in_shared / "again")
    assert [again["stages"][s]["status"] for s in ("baselines", "annotate", "train", "evaluate")] == [
        "skipped",
        "skipped",
        "skipped",
        "ran",
    ]


@pytest.mark.slow
def test_killed_training_stage_resumes_from_its_checkpoint(env):
    """SIGKILL the pipeline during training (after a periodic checkpoint); the rerun resumes that
    student's training from the checkpoint instead of starting over, and finishes the pipeline."""
    args = [
        sys.executable,
        "-m",
        "exp3rt",
        "debug=default",
        "trainer.max_steps=300",
        "trainer.checkpoint_every_n_steps=20",
        "eval.max_pairs=4",
        "eval.rerank=false",
        "eval.max_new_tokens=16",
        "progress=false",
        "logger=csv",
    ]
    e = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        args + [f"hydra.run.dir={env / 'r1'}"], env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    students = env / "artifacts" / "students"
    deadline = time.time() + 240
    ckpt = None
    while time.time() < deadline and proc.poll() is None:
        found = list(students.glob("*/checkpoints/last.ckpt")) if students.exists() else []
        if found:
            ckpt = found[0]
            time.sleep(1.0)
            break
        time.sleep(0.3)
    assert ckpt is not None, "no periodic checkpoint appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (ckpt.parent.parent / "train.json").exists()
    done = subprocess.run(
        args + [f"hydra.run.dir={env / 'r2'}"], env=e, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((env / "r2" / "metrics.json").read_text())
    assert m["stages"]["train"]["status"] == "resumed" and m["stages"]["train"]["global_step"] == 300
    assert m["stages"]["baselines"]["status"] == "skipped" and m["stages"]["annotate"]["status"] == "skipped"
    train_log = (ckpt.parent.parent / "csv" / "version_0" / "metrics.csv").read_text()
    assert train_log  # the resumed run appended to the same student's logs


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_preset_composes_and_validates(experiment):
    from exp3rt.config import ConfigError

    try:
        cfg = validate(compose_pipeline([f"experiment={experiment}"]))
    except ConfigError as e:  # the paper presets name no file: they must ask for exactly that
        assert experiment.startswith("paper_") and "dataset.path" in str(e)
        cfg = validate(compose_pipeline([f"experiment={experiment}", "dataset.path=/data/reviews.jsonl"]))
    assert cfg.experiment_name == experiment


def _imdb_stand_in(path: Path) -> Path:
    """The synthetic world on IMDB's 1–10 scale written as a reviews JSONL (the paper's IMDB reviews
    are not shipped): the paper_imdb preset reads it through its tabular loader."""
    from omegaconf import OmegaConf

    from exp3rt.data.prepare import prepare_dataset
    from tests.helpers import dataset_yaml, typed

    prepared = prepare_dataset(
        typed("dataset", OmegaConf.to_container(dataset_yaml("synthetic_imdb"))), path.parent / "data"
    )
    df = prepared.dataset.interactions[["user_id", "item_id", "rating", "review", "timestamp"]]
    df.to_json(path, orient="records", lines=True)
    return path


def test_paper_imdb_dry_run_builds_everything_but_the_weights(env):
    data = _imdb_stand_in(env / "imdb.jsonl")
    m = run_in_process(["experiment=paper_imdb", "dry_run=true", f"dataset.path={data}"], env / "dry")
    assert m["dry_run"] and m["strategy"] == "DeepSpeedStrategy"
    assert m["deepspeed"]["zero_optimization"]["stage"] == 2 and m["deepspeed"]["bf16"]["enabled"] is True
    assert m["batch"] == {
        "micro_batch_size": 4,
        "devices": 8,
        "num_nodes": 1,
        "accumulate_grad_batches": 1,
        "global_batch_size": 32,
        "precision": "bf16-mixed",
        "max_length": 1200,
    }
    assert m["peft"]["r"] == 128 and m["peft"]["target_modules"] == "all-linear"
    assert m["student"]["quantization_config"]["load_in_4bit"] is True
    assert m["peft"]["bias"] == "none" and m["student"]["quantization_config"]["compute_dtype"] == "bfloat16"
    assert m["student"]["weights"] == "not loaded (dry run)"
    est = m["teacher"]["estimate"]
    assert (
        m["teacher"]["identity"]["model"] == "gpt-3.5-turbo-1106"
        and m["teacher"]["identity"]["temperature"] == 0.1
    )
    assert est["extract"]["calls"] > 0 and m["teacher"]["max_cost_usd"] > 0
    assert (
        m["eval"]["rerank"]
        and m["eval"]["num_candidates"] == 20
        and m["eval"]["rerank_retriever"] == "lightgcn"
    )
    assert not list((env / "artifacts").glob("students/*")), "a dry run trains nothing"


@pytest.mark.shared_data
def test_paper_amazon_book_dry_run_on_the_amazon_format(env, shared_data):
    """The Amazon-2018 sample (Magazine_Subscriptions, the same format as Books) stands in for Books."""
    amazon = shared_data / "amazon-2018"
    m = run_in_process(
        [
            "experiment=paper_amazon_book",
            "dry_run=true",
            f"dataset.path={amazon / 'Magazine_Subscriptions_5.json.gz'}",
            f"dataset.meta_path={amazon / 'meta_Magazine_Subscriptions.json.gz'}",
            "dataset.strict=false",
            "dataset.kcore.user=0",
            "dataset.kcore.item=0",
        ],
        env / "dry",
    )
    assert m["data"]["name"] == "amazon_book" and m["data"]["interactions"] > 1000
    assert m["batch"]["global_batch_size"] == 32 and m["deepspeed"]["zero_optimization"]["stage"] == 2
    extract = m["teacher"]["estimate"][
        "extract"
    ]  # one request per training review, exact duplicates sent once
    assert (
        extract["requests"] == m["data"]["split"]["counts"]["train"]
        and 0 < extract["calls"] <= extract["requests"]
    )


def test_release_imdb_dry_run_imports_instead_of_calling(env):
    from release_layout import write_release

    root = write_release(env / "release")
    m = run_in_process(
        ["experiment=release_imdb", f"dataset.path={root / 'imdb'}", "dry_run=true"], env / "dry"
    )
    assert m["teacher"]["identity"]["backend"] == "release" and m["teacher"]["imported"] is True
    assert m["teacher"]["estimate"] is None
    assert m["data"]["split"]["counts"] == {"train": 67, "valid": 10, "test": 19}  # 96 pairs, 70/10/20


def test_release_amazon_book_trains_reasoning_on_the_published_rationales(env):
    """The Amazon-Book release publishes the teacher's rationales: its preset trains reasoning then rating
    on the seeded split's training pairs and scores exactly its test pairs."""
    from release_layout import write_release

    root = write_release(env / "release", variants=True)
    m = run_in_process(
        [
            "experiment=release_amazon_book",
            "student=tiny",
            "peft=lora",
            "trainer=cpu",
            "student.quantization=null",
            f"dataset.path={root / 'amazon-book'}",
            "train.batch_size=4",
            "train.micro_batch_size=4",
            "train.val_generate=false",
            "trainer.max_epochs=1",
            "sft.max_length=1024",
            "eval.max_new_tokens=8",
            "logger.wandb=false",
            "progress=false",
        ],
        env / "run",
    )
    train = json.loads((Path(m["stages"]["train"]["dir"]) / "train.json").read_text())
    assert (
        train["example_report"]["counts"]["train"]["rating"] == 67
        and train["example_report"]["ablation"] == "full"
    )
    test = pd.read_parquet(Path(m["stages"]["data"]["split_dir"]) / "test.parquet")
    preds = [
        json.loads(line)
        for line in (Path(m["stages"]["evaluate"]["dir"]) / "predictions.jsonl").read_text().splitlines()
    ]
    assert {(p["user_id"], p["item_id"]) for p in preds} == set(zip(test.user_id, test.item_id, strict=True))
    assert m["rating"]["student_expected"]["n"] == 19 and all(p["reasoning"] is not None for p in preds)


def test_release_imdb_without_the_release_names_the_key_to_set(env, monkeypatch):
    from exp3rt.cli.pipeline import run

    monkeypatch.setenv("EXP3RT_RELEASE", str(env / "nowhere"))
    with pytest.raises(
        FileNotFoundError, match=r"pass dataset.path=/path/to/EXP3RT/data/<imdb\|amazon-book>"
    ):
        run(compose_pipeline(["experiment=release_imdb", "dry_run=true"]), env / "dry")


def test_predefined_split_of_a_test_only_release_is_a_sentence_and_its_advice_works(env):
    """The release publishes test-labelled rating files only: split=predefined used to crash in
    GlobalMean.fit; it now says what to do, and what it says runs."""
    from release_layout import write_release

    from exp3rt.config import ConfigError

    root = write_release(env / "release")
    base = ["experiment=release_imdb", f"dataset.path={root / 'imdb'}", "dry_run=true"]
    with pytest.raises(ConfigError, match="labels no pair as training") as err:
        run_in_process([*base, "split=predefined"], env / "dry")
    advice = str(err.value).split("seeded split instead: ")[1].split(" (")[0].split()
    assert advice == ["split=random", "split.test_ratio=0.2", "split.valid_ratio=0.1"]
    m = run_in_process([*base, *advice], env / "dry2")
    assert m["data"]["split"]["counts"]["train"] > 0


def test_release_imdb_trains_and_evaluates_on_the_published_layout(env):
    """experiment=release_imdb on a made-up copy of the published layout (96 test-labelled pairs, header
    variants included): a seeded 70/10/20 split, the release's profiles imported, the student trained on
    profiles -> rating (no IMDB rationales are published), and exactly the split's test pairs scored,
    all of them cold (4 pairs a user). The tiny student stands in for the 8B one."""
    from release_layout import write_release

    root = write_release(env / "release", variants=True)
    m = run_in_process(
        [
            "experiment=release_imdb",
            "student=tiny",
            "peft=lora",
            "trainer=cpu",
            "student.quantization=null",
            f"dataset.path={root / 'imdb'}",
            "train.batch_size=4",
            "train.micro_batch_size=4",
            "train.val_generate=false",
            "trainer.max_epochs=1",
            "sft.max_length=1024",
            "eval.max_new_tokens=8",
            "logger.wandb=false",
            "progress=false",
        ],
        env / "run",
    )
    assert {s: r["status"] for s, r in m["stages"].items()} == {
        "data": "ready",
        "baselines": "ran",
        "annotate": "ran",
        "train": "ran",
        "evaluate": "ran",
    }
    train = json.loads((Path(m["stages"]["train"]["dir"]) / "train.json").read_text())
    counts = train["example_report"]["counts"]
    assert counts["train"]["rating"] == 67 and counts["test"]["rating"] == 19
    assert train["example_report"]["ablation"] == "no_reasoning"
    split_dir = Path(m["stages"]["data"]["split_dir"])
    test = pd.read_parquet(split_dir / "test.parquet")
    preds = [
        json.loads(line)
        for line in (Path(m["stages"]["evaluate"]["dir"]) / "predictions.jsonl").read_text().splitlines()
    ]
    assert {(p["user_id"], p["item_id"]) for p in preds} == set(zip(test.user_id, test.item_id, strict=True))
    assert m["protocol"]["scored_split"] == "test" and m["protocol"]["warm"]["pairs_cold"] == 19
    assert not any(p["warm"] for p in preds)
    expected = m["rating"]["student_expected"]
    assert expected["n"] == 19 and expected["failures"] == 0 and m["rating"]["global_mean"]["n"] == 19
    assert 0.0 <= expected["mae"] <= expected["rmse"] <= 9.0  # within the 1-10 scale's width
    assert "19 of 19 users" not in (env / "run" / "report.md").read_text()  # users, not pairs, are counted
    assert "are cold: fewer than 5 training ratings" in (env / "run" / "report.md").read_text()


def test_the_summary_warns_when_reasonings_were_cut(shared, tmp_path):
    from exp3rt.cli.pipeline import summary

    _, first = shared
    cut = {
        **first,
        "generation": {**first["generation"], "cut": 3, "warning": "3 of 8 reasonings hit max_new_tokens=24"},
    }
    assert "WARNING: 3 of 8 reasonings hit max_new_tokens=24" in summary(cut, tmp_path)
    clean = {**first, "generation": {k: v for k, v in first["generation"].items() if k != "warning"}}
    assert "WARNING" not in summary(clean, tmp_path)


def test_python_dash_m_exp3rt_is_the_pipeline(env):
    out = subprocess.run(
        [sys.executable, "-m", "exp3rt", "--cfg", "job"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "task_name: pipeline" in out.stdout and "experiment_name: demo" in out.stdout


@pytest.mark.slow
def test_demo_end_to_end_prints_the_table(env):
    """The README's first command, as a user runs it (subprocess, default config): one table with the
    student and the rating baselines on the same test pairs, reranking before/after, an explanation and
    the report path. The student's rating-only readout beats the global mean on the same 200 pairs by
    more than 0.03 RMSE (0.09 on this machine: see README "The demo"); its reasoning readout does not,
    and the table says so in words (the method's verdict, the readout check, the reranking that lowered
    nDCG)."""
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "exp3rt", f"hydra.run.dir={env / 'demo'}"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    seconds = time.time() - t0
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads((env / "demo" / "metrics.json").read_text())
    student, glob = m["rating"]["student_direct_expected"], m["rating"]["global_mean"]
    print(
        f"demo: {seconds:.0f} s; student (rating-only readout) RMSE {student['rmse']:.4f} vs global "
        f"mean {glob['rmse']:.4f} "
        f"on {student['n']} pairs; rerank nDCG@10 {m['rerank']['before/ndcg@10']:.4f} -> "
        f"{m['rerank']['after/ndcg@10']:.4f}"
    )
    assert (
        student["n"] == glob["n"] == m["rating"]["student_expected"]["n"] == 200
        and student["parse_rate"] == 1.0
    )
    assert student["rmse"] < glob["rmse"] - 0.03, (student, glob)
    assert m["rerank"]["mode"] == "fast"
    assert f"student on {m['protocol']['device']}" in out.stdout
    assert m["rerank"]["users"] == 20 and m["rerank"]["num_candidates"] == 20
    assert {s: r["status"] for s, r in m["stages"].items()} == {
        "data": "ready",
        "baselines": "ran",
        "annotate": "ran",
        "train": "ran",
        "evaluate": "ran",
    }
    for text in (
        "| student_direct_expected",
        "| student_expected",
        "| global_mean",
        "| biased_mf",
        "parse rate",
        "ndcg@10",
        "Example:",
        "report:",
        "are the method (reasoning, then the rating read after it)",
        "a check of the readout, not EXP3RT's method",
        "Reasoning about the pair: aspect precision",
    ):
        assert text in out.stdout
    if m["rerank"]["after/ndcg@10"] < m["rerank"]["before/ndcg@10"]:
        assert "LOWERED nDCG@10" in out.stdout
    assert (env / "demo" / "report.md").is_file()


def test_a_rating_direct_student_reports_both_readouts_and_reranks_after_the_rating_only_prompt(in_shared):
    """The demo's student learns reasoning (task rating) and the rating-only form (rating_direct): the
    evaluation reads out both on the same pairs, each with its own rows and prediction fields, and fast
    reranking prompts it with the rating-only instruction it was trained on."""
    m = run_in_process(
        FAST + ["sft.tasks=[rating,rating_direct]", "eval.rerank_mode=fast"], in_shared / "direct"
    )
    ev_dir = Path(m["stages"]["evaluate"]["dir"])
    rows = m["rating"]
    assert (
        rows["student_direct_expected"]["n"] == rows["student_expected"]["n"] == rows["global_mean"]["n"] == 8
    )
    assert rows["student_direct_expected"]["parse_rate"] == 1.0
    preds = [json.loads(line) for line in (ev_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 8
    for p in preds:
        probs = p["direct_probs"]
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5) and sorted(probs) == [
            "1",
            "2",
            "3",
            "4",
            "5",
        ]
        assert p["rating_direct_expected"] == pytest.approx(
            sum(float(r) * q for r, q in probs.items()), abs=1e-6
        )
        assert (
            p["finish"] is not None and p["probs"] != probs
        )  # two readouts of one pair, after different prompts
    truth = np.array([p["truth"] for p in preds])
    direct = np.array([p["rating_direct_expected"] for p in preds])
    assert rows["student_direct_expected"]["rmse"] == pytest.approx(
        float(np.sqrt(np.mean((truth - direct) ** 2)))
    )
    assert m["rerank"]["mode"] == "fast" and m["flat"]["rating/student_direct_expected/rmse"] > 0


def test_a_validation_scored_run_never_reads_a_test_pair_even_when_reranking(in_shared, tmp_path):
    """eval.split=valid (what a search optimises): the rating pairs are validation pairs, and reranking the
    baselines' own candidates is judged by validation pairs, not the test pairs stored beside them."""
    m = run_in_process(
        [*FAST, "split.valid_ratio=0.1", "eval.split=valid", "eval.max_pairs=null"], tmp_path / "valid"
    )
    split_dir = Path(m["stages"]["data"]["split_dir"])
    valid, test = (pd.read_parquet(split_dir / f"{p}.parquet") for p in ("valid", "test"))
    preds = (Path(m["stages"]["evaluate"]["dir"]) / "predictions.jsonl").read_text().splitlines()
    scored = {(json.loads(line)["user_id"], json.loads(line)["item_id"]) for line in preds}
    assert scored == set(zip(valid.user_id, valid.item_id, strict=True))
    assert m["protocol"]["scored_split"] == "valid" and m["rerank"]["relevant"] == "this split's valid pairs"
    assert str(m["rerank"]["retriever"]).endswith("candidates/lightgcn.parquet")  # the baselines' own file
    assert len(scored & set(zip(test.user_id, test.item_id, strict=True))) == 0


def test_the_blend_weight_is_chosen_on_validation_users_before_any_test_user_is_read(in_shared, tmp_path):
    """eval.rerank_tune_on=valid: the student scores validation users' candidates (LightGCN refitted with
    the baselines stage's settings, since the pipeline hands the reranker the baselines' test candidates),
    and the β best on their validation pairs reranks the test users. Checked by hand from
    rerank_scores.jsonl: validation rows are judged by validation pairs only, and the β is their best."""
    from exp3rt.metrics import per_user
    from tests.helpers import blend_by_hand

    grid = [0.5, 1.0, 4.0]
    m = run_in_process(
        [
            *FAST,
            "split.valid_ratio=0.1",
            f"eval.rerank_tune_weights=[{','.join(map(str, grid))}]",
            "eval.rerank_tune_users=3",
        ],
        tmp_path / "tuned",
    )
    split_dir = Path(m["stages"]["data"]["split_dir"])
    valid, test = (pd.read_parquet(split_dir / f"{p}.parquet") for p in ("valid", "test"))
    rows = [
        json.loads(line)
        for line in (Path(m["stages"]["evaluate"]["dir"]) / "rerank_scores.jsonl").read_text().splitlines()
    ]
    t = m["rerank"]["tuning"]
    assert t["on"] == "valid" and t["retriever"] == "lightgcn" and t["users"] == 3
    mine = [r for r in rows if r["part"] == "valid"]
    assert len({r["user_id"] for r in mine}) == 3 and {r["part"] for r in rows} == {"valid", "test"}
    valid_pairs = set(zip(valid.user_id, valid.item_id, strict=True))
    test_pairs = set(zip(test.user_id, test.item_id, strict=True))
    assert all(r["relevant"] == ((r["user_id"], r["item_id"]) in valid_pairs) for r in mine)
    assert not any((r["user_id"], r["item_id"]) in test_pairs for r in mine if r["relevant"])
    judged = {u: set(valid[valid.user_id == u].item_id) for u in {r["user_id"] for r in mine}}
    by_hand = {}
    for b in grid:
        got = per_user(blend_by_hand(mine, b), judged, "ndcg", 10)
        by_hand[b] = sum(got.values()) / len(got)
    assert t["valid_ndcg"] == pytest.approx({f"{b:g}": v for b, v in by_hand.items()})
    best = max(grid, key=lambda b: (by_hand[b], -grid.index(b)))
    assert t["chosen"] == m["rerank"]["rating_weight"] == best
    assert str(m["rerank"]["retriever"]).endswith("candidates/lightgcn.parquet")  # test users: the file


def test_the_run_says_which_readout_is_the_method_and_whether_reasoning_is_about_the_pair(shared):
    from exp3rt.cli.pipeline import summary

    root, first = shared
    about = first["reasoning"]
    assert (
        about["n"] == 8 and 0.0 <= about["aspect_precision"] <= 1.0 and 0.0 <= about["aspect_recall"] <= 1.0
    )
    assert 0.0 < about["distinct_share"] <= 1.0 and 0.0 < about["teacher_aspect_recall"] <= 1.0
    assert first["flat"]["reasoning/aspect_recall"] == pytest.approx(about["aspect_recall"])
    text = summary(first, root / "run1")
    assert "student_expected / student_argmax are the method" in text and "best baseline" in text
    assert "Reasoning about the pair: aspect precision" in text
    assert "Reasoning about the pair (synthetic ground truth)" in (root / "run1" / "report.md").read_text()


def test_a_student_without_reasoning_gets_no_reasoning_figures(in_shared):
    m = run_in_process([*FAST, "ablation=no_reasoning", "eval.rerank=false"], in_shared / "no_reasoning")
    assert m["rating"]["student_expected"]["n"] == 8
    assert not m.get("reasoning")  # a student that writes no reasoning has no aspect recall of 0
    assert not any(k.startswith("reasoning/") for k in m["flat"])
    assert "Reasoning about the pair" not in (in_shared / "no_reasoning" / "report.md").read_text()
