"""exp3rt-evaluate on a freshly trained tiny student: predictions with both readouts, failures counted
by policy, baselines on the same pairs, report and plots written; the saved config drives everything."""

from __future__ import annotations

import json
import math

import pytest
from hydra import compose, initialize_config_dir

from exp3rt import CONF_DIR
from exp3rt.evaluation.pairs import check_scored_pairs
from exp3rt.evaluation.scoring import apply_fallback, error_table, fallback_models
from exp3rt.inference.prediction import Prediction

WORLD = [
    "dataset.world.n_users=12",
    "dataset.world.n_items=10",
    "dataset.world.min_per_user=4",
    "dataset.world.max_per_user=5",
]


def compose_cfg(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from exp3rt.cli.annotate import run as annotate
    from exp3rt.cli.train import run as train

    root = tmp_path_factory.mktemp("eval")
    base = [f"paths.artifacts_dir={root}/artifacts", "progress=false", *WORLD]
    annotate(compose_cfg("annotate", base), root / "annotate")
    train(
        compose_cfg("train", [*base, "trainer.max_steps=5", "logger=csv", "train.val_generate=false"]),
        root / "train",
    )
    return root


def test_evaluate_writes_predictions_metrics_report_and_plots(trained, tmp_path):
    from exp3rt.cli.evaluate import run

    cfg = compose_cfg(
        "evaluate",
        [
            f"paths.artifacts_dir={trained}/artifacts",
            f"run_dir={trained}/train",
            "eval.max_pairs=6",
            "eval.max_new_tokens=8",
        ],
    )
    metrics = run(cfg, tmp_path / "ev")
    out = tmp_path / "ev"
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 6
    for p in preds:
        assert {
            "user_id",
            "item_id",
            "truth",
            "reasoning",
            "probs",
            "rating_argmax",
            "rating_expected",
            "fallback",
        } <= set(p)
        assert abs(sum(p["probs"].values()) - 1.0) < 1e-6
        assert 1.0 <= p["rating_expected"] <= 5.0 and p["rating_argmax"] in (1.0, 2.0, 3.0, 4.0, 5.0)
    r = metrics["rating"]
    assert {"student_expected", "student_argmax", "global_mean", "biased_mf"} <= set(r)
    assert r["student_expected"]["n"] == 6 and r["student_expected"]["parse_rate"] == 1.0
    # the method against every baseline on the same pairs, with a paired bootstrap interval
    paired = metrics["paired"]
    assert {f"student_expected_vs_{m}" for m in r if not m.startswith("student")} <= set(paired)
    vs_mf = paired["student_expected_vs_biased_mf"]
    assert vs_mf["n"] == 6 and math.isclose(vs_mf["rmse_a"], r["student_expected"]["rmse"])
    assert math.isclose(vs_mf["rmse_b"], r["biased_mf"]["rmse"])
    assert vs_mf["ci_low"] <= vs_mf["rmse_diff"] <= vs_mf["ci_high"]
    assert "## The method against each model, paired" in (out / "report.md").read_text()
    # no free-text row: the reasoning stops at the rating prefix, so a parse of it never found a rating
    # (0 % parsed in every run); the mass on valid ratings says whether the student would write one
    assert not any("parsed" in name for name in r) and "student_parsed" not in (out / "report.md").read_text()
    assert all("rating_parsed" not in p and 0.0 < p["valid_mass"] <= 1.0 + 1e-9 for p in preds)
    for name in ("report.md", "metrics.json", "rating_distributions.png", "confusion.png", "calibration.png"):
        assert (out / name).stat().st_size > 0
    assert "SYNTHETIC" in (out / "report.md").read_text()


def test_paired_runs_benchmark_recomputes_an_older_runs_table_exactly(trained, tmp_path, capsys, monkeypatch):
    """benchmarks/paired_runs.py on a run evaluated before metrics.json had "paired": the baselines
    refitted on its training split give the table the evaluation wrote; a run against itself ties."""
    import importlib.util

    from exp3rt import CONF_DIR
    from exp3rt.cli.evaluate import run

    cfg = compose_cfg(
        "evaluate",
        [f"paths.artifacts_dir={trained}/artifacts", f"run_dir={trained}/train", "eval.max_pairs=6"],
    )
    ev = tmp_path / "ev"
    written = run(cfg, ev)["paired"]
    metrics = json.loads((ev / "metrics.json").read_text())
    del metrics["paired"]  # as an older evaluation left it
    (ev / "metrics.json").write_text(json.dumps(metrics))
    spec = importlib.util.spec_from_file_location(
        "paired_runs", CONF_DIR.parent / "benchmarks" / "paired_runs.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    again = bench.within(ev)
    assert set(again) == set(written)
    for name, r in written.items():
        assert again[name] == pytest.approx(r), name
    same = bench.across(ev, ev)
    assert same["n"] == 6 and same["rmse_diff"] == 0.0 and same["share_a_better"] == 0.0
    monkeypatch.setattr("sys.argv", ["paired_runs.py", str(ev), "--against", str(ev)])
    bench.main()
    out = capsys.readouterr().out
    mf = written["student_expected_vs_biased_mf"]
    assert f"| biased_mf (ev) | 6 | {mf['rmse_a']:.4f} | {mf['rmse_b']:.4f} | {mf['rmse_diff']:+.4f} |" in out
    assert "| ev's student (ev) | 6 |" in out and "+0.0000 | [+0.0000, +0.0000] | 0.000 |" in out


def test_compute_estimate_on_a_student_that_writes_none_is_refused_before_any_work(trained, tmp_path):
    from exp3rt.cli.evaluate import run
    from exp3rt.config import ConfigError

    base = [f"paths.artifacts_dir={trained}/artifacts", f"run_dir={trained}/train", "eval.max_pairs=2"]
    with pytest.raises(ConfigError, match=r"eval.compute_estimate.*prompt.rationale_form=scored") as err:
        run(compose_cfg("evaluate", [*base, "eval.compute_estimate=true"]), tmp_path / "ev")
    assert not (tmp_path / "ev" / "predictions.jsonl").exists()
    advice = "eval.compute_estimate=false"
    assert advice in str(err.value)
    assert run(compose_cfg("evaluate", [*base, advice, "eval.mode=fast"]), tmp_path / "ok")["rating"]


def test_reasoning_budget_defaults_to_the_training_answers_and_cut_reasonings_are_counted(
    trained, tmp_path, caplog
):
    """A reasoning budget below the answers the student trained on cuts every reasoning before its
    conclusion (seen with SmolLM2 on a GPU: ~140-token answers, 96 allowed, readouts near 1 for true 5s).
    The default comes from train.json's answer lengths; a cut is counted, reported and warned about."""
    from exp3rt.cli.evaluate import run

    answers = json.loads((trained / "train" / "train.json").read_text())["answer_tokens"]
    assert (
        answers["task"] == "rating"
        and answers["n"] > 0
        and 0 < answers["mean"] <= answers["p99"] <= answers["max"]
    )
    base = [f"paths.artifacts_dir={trained}/artifacts", f"run_dir={trained}/train", "eval.max_pairs=3"]

    m = run(compose_cfg("evaluate", base), tmp_path / "default")
    gen = m["generation"]
    assert gen["max_new_tokens"] == answers["max"] + 16 and gen["source"].startswith(
        "longest training answer"
    )
    assert sum(gen["finish"].values()) == 3

    with caplog.at_level("WARNING"):
        m = run(compose_cfg("evaluate", [*base, "eval.max_new_tokens=2"]), tmp_path / "short")
    gen = m["generation"]
    assert (
        gen["max_new_tokens"] == 2
        and gen["finish"] == {"length": 3}
        and gen["cut"] == 3
        and gen["cut_rate"] == 1.0
    )
    assert "3 of 3 reasonings hit max_new_tokens=2" in gen["warning"]
    assert f"below the longest answer the student trained on ({answers['max']} tokens" in caplog.text
    preds = [json.loads(line) for line in (tmp_path / "short" / "predictions.jsonl").read_text().splitlines()]
    assert [p["finish"] for p in preds] == ["length"] * 3
    assert "**Warning:** 3 of 3 reasonings hit" in (tmp_path / "short" / "report.md").read_text()
    saved = json.loads((tmp_path / "short" / "metrics.json").read_text())
    assert saved["generation"]["cut"] == 3


def test_answer_token_stats_counts_the_answer_tokens_of_one_task():
    from exp3rt.student.tokenize import IGNORE_INDEX, answer_token_stats

    data = {
        "labels": [[IGNORE_INDEX] * 5 + [1, 2, 3], [IGNORE_INDEX, 4, 5], [IGNORE_INDEX] * 2 + [1] * 10],
        "task": ["rating", "rating", "user_profile"],
    }
    assert answer_token_stats(data) == {"task": "rating", "n": 2, "mean": 2.5, "p99": 3, "max": 3}
    assert answer_token_stats(data, "item_profile") is None


def test_failure_policies_count_and_never_score_zero_error():
    import pandas as pd

    train = pd.DataFrame({"user_id": ["u", "u", "w"], "item_id": ["i", "j", "i"], "rating": [4.0, 4.0, 1.0]})
    models = fallback_models(train, (1.0, 5.0))  # user u 4, item i 2.5, global 3
    preds = [
        Prediction("u", "i", 5.0, True, "", rating_expected=None),
        Prediction("v", "i", 1.0, False, "", rating_expected=1.0),
    ]
    assert apply_fallback(None, "user_mean", "u", "i", models) == (4.0, True)
    assert apply_fallback(None, "item_mean", "u", "i", models) == (2.5, True)
    assert apply_fallback(None, "item_mean", "u", "new", models) == (3.0, True)
    assert apply_fallback(None, "exclude", "u", "i", models) == (None, True)
    assert apply_fallback(2.0, "user_mean", "u", "i", models) == (2.0, False)
    excluded = error_table(preds, "expected", "exclude", models)
    assert (
        excluded["failures"] == 1
        and excluded["scored"] == 1
        and excluded["rmse"] == 0.0
        and excluded["parse_rate"] == 0.5
    )
    filled = error_table(preds, "expected", "user_mean", models)
    assert filled["scored"] == 2 and filled["rmse"] == pytest.approx(((5 - 4) ** 2 / 2) ** 0.5)


def test_user_mean_failure_policy_predicts_what_the_user_mean_baseline_row_predicts():
    """The user_mean fallback used the item's mean for a user without training ratings, while the
    user_mean baseline row predicts the global mean there: a filled failure now gets exactly the
    baseline's prediction (warm user, user with no training ratings, unknown item)."""
    import pandas as pd

    from exp3rt.baselines.rating import UserMean

    train = pd.DataFrame(
        {"user_id": ["u", "u", "w", "x"], "item_id": ["i", "j", "i", "i"], "rating": [5.0, 4.0, 1.0, 2.0]}
    )
    baseline = UserMean((1.0, 5.0)).fit(train)
    models = fallback_models(train, (1.0, 5.0))
    pairs = [("u", "i"), ("cold", "i"), ("u", "unknown"), ("cold", "unknown")]
    expected = baseline.predict([u for u, _ in pairs], [i for _, i in pairs])
    assert list(expected) == pytest.approx([4.5, 3.0, 4.5, 3.0])
    for (user, item), want in zip(pairs, expected, strict=True):
        assert apply_fallback(None, "user_mean", user, item, models) == (pytest.approx(want), True)
    preds = [Prediction(u, i, 3.0, u != "cold", "", rating_expected=None) for u, i in pairs]
    table = error_table(preds, "expected", "user_mean", models)
    assert table["failures"] == 4 and table["scored"] == 4
    assert table["mae"] == pytest.approx(sum(abs(3.0 - v) for v in expected) / 4)


def _fast_rerank_cfg(trained, pairs: int, *overrides: str):
    """The evaluate config of the ``trained`` run, scoring ``pairs`` pairs in fast mode, with reranking on."""
    return compose_cfg(
        "evaluate",
        [
            f"paths.artifacts_dir={trained}/artifacts",
            f"run_dir={trained}/train",
            f"eval.max_pairs={pairs}",
            "eval.mode=fast",
            "eval.rerank=true",
            *overrides,
        ],
    )


def test_reranking_scores_every_candidate_and_reports_before_and_after(trained, tmp_path):
    from exp3rt.cli.evaluate import run

    cfg = _fast_rerank_cfg(
        trained,
        2,
        "eval.rerank_max_users=4",
        "eval.num_candidates=5",
        "eval.rerank_retriever=popularity",
    )
    rr = run(cfg, tmp_path / "ev")["rerank"]
    assert rr["users"] == 4 and rr["num_candidates"] == 5 and rr["retriever"] == "popularity"
    for k in (1, 5, 10):
        for side in ("before", "after"):
            assert 0.0 <= rr[f"{side}/ndcg@{k}"] <= 1.0
    # reranking permutes the same 5 candidates: recall@5 (and hit@5) cannot change
    assert rr["before/recall@5"] == rr["after/recall@5"] and rr["before/hit@5"] == rr["after/hit@5"]
    assert rr["candidates_unscored"] == 0 and rr["time_per_user_s"] > 0
    gain = rr["gain/ndcg@10"]
    assert math.isclose(gain, rr["after/ndcg@10"] - rr["before/ndcg@10"], abs_tol=1e-12)
    assert rr["gain/ndcg@10_ci_low"] <= gain <= rr["gain/ndcg@10_ci_high"]
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "reranking" in report and f"ndcg@10 {gain:+.4f}" in report


def test_crossfit_reranks_each_half_of_the_users_with_the_weight_the_other_half_chose(trained, tmp_path):
    """eval.rerank_tune_on=crossfit: no user's relevant items choose the β that user is reranked with.
    Rebuilt by hand from rerank_scores.jsonl: each fold's β is the best one on the other fold, and the
    reranked figures are those of each user ranked with their fold's β."""
    from exp3rt.cli.evaluate import run
    from exp3rt.metrics import per_user
    from tests.helpers import blend_by_hand as _by_hand

    grid = [0.25, 1.0, 4.0]
    cfg = _fast_rerank_cfg(
        trained,
        1,
        "eval.rerank_max_users=6",
        "eval.num_candidates=6",
        "eval.rerank_retriever=popularity",
        f"eval.rerank_tune_weights=[{','.join(map(str, grid))}]",
        "eval.rerank_tune_on=crossfit",
        "eval.rerank_tune_k=5",
    )
    rr = run(cfg, tmp_path / "ev")["rerank"]
    rows = [json.loads(line) for line in (tmp_path / "ev" / "rerank_scores.jsonl").read_text().splitlines()]
    assert {r["part"] for r in rows} == {"test"} and rr["candidates_unscored"] == 0
    for r in rows:  # the readout behind each score: E[r] = Σ r·p over the scale
        assert sorted(r["probs"]) == ["1", "2", "3", "4", "5"]
        assert sum(r["probs"].values()) == pytest.approx(1.0)
        assert r["expected"] == pytest.approx(sum(float(v) * q for v, q in r["probs"].items()))
    ranks: dict = {}
    for r in rows:
        ranks.setdefault(r["user_id"], []).append(r["first_stage_rank"])
    assert len(ranks) == 6 and all(sorted(v) == list(range(len(v))) for v in ranks.values())
    test = _split_parts(trained)["test"]
    relevant = {u: set(test[test.user_id == u].item_id) for u in {r["user_id"] for r in rows}}
    assert all(r["relevant"] == (r["item_id"] in relevant[r["user_id"]]) for r in rows)
    users = sorted(relevant)
    folds = [users[0::2], users[1::2]]
    t = rr["tuning"]
    assert t["on"] == "crossfit" and t["metric"] == "ndcg@5" and [f["users"] for f in t["folds"]] == [3, 3]

    def ndcg(ranked: dict, who: list) -> float:
        got = per_user(ranked, {u: relevant[u] for u in who}, "ndcg", 5)
        return sum(got.values()) / len(got)

    reranked: dict = {}
    for f, (mine, other) in enumerate(((folds[0], folds[1]), (folds[1], folds[0]))):
        on_other = {b: ndcg(_by_hand(rows, b), other) for b in grid}
        assert t["folds"][f]["other_ndcg"] == pytest.approx({f"{b:g}": v for b, v in on_other.items()})
        best = max(grid, key=lambda b: (on_other[b], -grid.index(b)))
        assert t["folds"][f]["chosen"] == best
        reranked.update({u: lst for u, lst in _by_hand(rows, best).items() if u in mine})
    assert rr["rating_weight"] == [f["chosen"] for f in t["folds"]]
    assert rr["after/ndcg@5"] == pytest.approx(ndcg(reranked, users))
    assert t["scored_ndcg"]["1"] == pytest.approx(ndcg(_by_hand(rows, 1.0), users))
    # the separation of relevant from other candidates, by hand
    aucs = []
    for u in users:
        mine_rows = [r for r in rows if r["user_id"] == u]
        pos = [r["expected"] for r in mine_rows if r["relevant"]]
        neg = [r["expected"] for r in mine_rows if not r["relevant"]]
        if pos and neg:
            aucs.append(sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg)))
    assert rr["auc/users"] == len(aucs) and rr["auc/student"] == pytest.approx(sum(aucs) / len(aucs))
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "Blend weight by cross-fitting over users: fold 1 (3 users) got β = " in report
    assert f"the student's expected rating {rr['auc/student']:.3f}" in report


def test_tuning_on_validation_users_without_a_validation_part_says_what_to_do_and_that_works(
    trained, tmp_path
):
    from exp3rt.cli.evaluate import run
    from exp3rt.config import ConfigError

    base = [
        f"paths.artifacts_dir={trained}/artifacts",
        f"run_dir={trained}/train",
        "eval.max_pairs=1",
        "eval.mode=fast",
        "eval.rerank=true",
        "eval.rerank_max_users=2",
        "eval.num_candidates=4",
        "eval.rerank_retriever=popularity",
        "eval.rerank_tune_weights=[0.5,2.0]",
    ]
    with pytest.raises(ConfigError, match="this split has no validation pairs") as err:
        run(compose_cfg("evaluate", base), tmp_path / "refused")
    advice = str(err.value).split("instead: ")[1]
    assert advice == "eval.rerank_tune_on=crossfit"
    rr = run(compose_cfg("evaluate", [*base, advice]), tmp_path / "ev")["rerank"]
    assert rr["users"] == 2 and [f["users"] for f in rr["tuning"]["folds"]] == [1, 1]


def test_the_student_is_loaded_once_on_its_device_with_lora_folded_in(trained, tmp_path, monkeypatch):
    """Predictions and reranking share one load (an 8B model takes minutes); eval.device places it (the
    hf backend once left it on the CPU of a GPU machine); the LoRA adapter is merged into the weights
    for inference, with the same readouts as the unmerged adapter."""
    import torch
    from peft import PeftModel

    import exp3rt.inference.predict as predict
    from exp3rt.cli.evaluate import run
    from exp3rt.config import ConfigError, validate
    from exp3rt.devices import resolve_device

    loads = []
    original = PeftModel.from_pretrained
    monkeypatch.setattr(
        PeftModel, "from_pretrained", lambda *a, **k: loads.append(a[-1]) or original(*a, **k)
    )
    held = []
    real_load = predict.load_student
    monkeypatch.setattr(predict, "load_student", lambda *a, **k: held.append(real_load(*a, **k)) or held[-1])
    base = [
        f"paths.artifacts_dir={trained}/artifacts",
        f"run_dir={trained}/train",
        "eval.max_pairs=4",
        "eval.max_new_tokens=6",
        "eval.rerank=true",
        "eval.rerank_max_users=2",
        "eval.num_candidates=3",
        "eval.rerank_retriever=popularity",
        "eval.rerank_mode=full",
    ]
    merged = run(compose_cfg("evaluate", base), tmp_path / "merged")
    assert len(loads) == 1 and len(held) >= 2  # predictions and reranking: one load
    assert (
        merged["protocol"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
        and merged["protocol"]["merge_lora"]
    )
    model = held[0][0]
    assert not any("lora" in name for name, _ in model.named_modules())
    assert next(model.parameters()).device.type == merged["protocol"]["device"]
    assert not predict._LOADED  # released when the evaluation ended
    unmerged = run(compose_cfg("evaluate", [*base, "eval.merge_lora=false"]), tmp_path / "unmerged")
    assert len(loads) == 2 and any("lora" in name for name, _ in held[-1][0].named_modules())
    for a, b in zip(
        *(((tmp_path / d / "predictions.jsonl").read_text().splitlines()) for d in ("merged", "unmerged")),
        strict=True,
    ):
        pa, pb = json.loads(a), json.loads(b)
        assert pa["reasoning"] == pb["reasoning"]
        assert max(abs(pa["probs"][k] - pb["probs"][k]) for k in pa["probs"]) < 1e-5
    assert merged["rerank"]["after/ndcg@1"] == unmerged["rerank"]["after/ndcg@1"]
    with pytest.raises(ConfigError, match="eval.device"):
        validate(compose_cfg("evaluate", [*base, "eval.device=gpu0"]))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA GPU"):
            resolve_device("cuda")


def test_evaluate_on_a_release_rating_file(trained, tmp_path, shared_data):
    from exp3rt.cli.evaluate import run

    path = shared_data / "exp3rt-release-sample" / "amazon-book" / "rating_with_rationale_sample.json"
    cfg = compose_cfg(
        "evaluate",
        [
            f"paths.artifacts_dir={trained}/artifacts",
            f"run_dir={trained}/train",
            "eval.mode=fast",
            f"eval.test_file={path}",
        ],
    )
    metrics = run(cfg, tmp_path / "ev")
    preds = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 25 and preds[0]["user_id"] == "AHM2SCEWEBC7DV2CAZHFG3PIX37Q"
    assert metrics["protocol"]["file"]["records"] == 25 and str(path) in metrics["protocol"]["source"]
    assert sum(p["truth"] for p in preds) == 30  # the sample's scores add up to 30


def test_wandb_gets_metrics_and_an_explanations_table(trained, tmp_path, monkeypatch):
    import shutil

    from omegaconf import OmegaConf

    from exp3rt.cli.evaluate import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    # the fixture trained with logger=csv (W&B off): evaluation follows the training run and logs nothing
    cfg = compose_cfg(
        "evaluate",
        [
            f"paths.artifacts_dir={trained}/artifacts",
            f"run_dir={trained}/train",
            "eval.max_pairs=3",
            "eval.mode=fast",
        ],
    )
    metrics = run(cfg, tmp_path / "off")
    assert "wandb_dir" not in metrics and not (tmp_path / "off" / "wandb").exists()
    # the same run with W&B on (as logger=wandb writes it)
    run_dir = tmp_path / "train"
    shutil.copytree(trained / "train", run_dir)
    saved = OmegaConf.load(run_dir / "config.yaml")
    saved.logger.wandb = True
    OmegaConf.save(saved, run_dir / "config.yaml")
    cfg = compose_cfg(
        "evaluate",
        [
            f"paths.artifacts_dir={trained}/artifacts",
            f"run_dir={run_dir}",
            "eval.max_pairs=3",
            "eval.mode=fast",
        ],
    )
    metrics = run(cfg, tmp_path / "ev")
    runs = list((tmp_path / "ev" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    assert b"explanations" in runs[0].read_bytes()
    assert metrics["wandb_dir"].endswith("wandb")


def test_reranking_reads_a_candidates_file(trained, tmp_path):
    import pandas as pd

    from exp3rt.baselines.retrievers import write_candidates
    from exp3rt.cli.evaluate import run

    split_dir = next((trained / "artifacts" / "data").glob("*/splits/*"))
    test = pd.read_parquet(split_dir / "test.parquet")
    users = sorted(test.user_id.unique())[:3]
    items = sorted(pd.read_parquet(split_dir / "train.parquet").item_id.unique())
    path = write_candidates(
        {
            u: [i for i in items if i not in set(test[test.user_id == u].item_id)][:3]
            + list(test[test.user_id == u].item_id[:1])
            for u in users
        },
        tmp_path / "cands.parquet",
    )
    cfg = _fast_rerank_cfg(
        trained,
        1,
        f"eval.candidates_file={path}",
        "eval.num_candidates=4",
    )
    rr = run(cfg, tmp_path / "ev")["rerank"]
    assert rr["users"] == 3 and rr["retriever"] == str(path)
    assert rr["before/hit@5"] == rr["after/hit@5"] == 1.0  # the relevant item is among the 4 either way


def test_vllm_backend_gives_the_same_evaluation(trained, tmp_path, monkeypatch):
    """eval.backend=vllm through the whole run (tests/fake_vllm.py: vLLM's offline API on CPU, real logits):
    the same predictions and rerank metrics as eval.backend=hf, the LoRA adapter served through a
    LoRARequest, one engine for predictions and reranking."""
    import fake_vllm

    from exp3rt.cli.evaluate import run
    from exp3rt.inference.vllm_backend import release_engines

    fake_vllm.install(monkeypatch)
    release_engines()
    common = [
        f"paths.artifacts_dir={trained}/artifacts",
        f"run_dir={trained}/train",
        "eval.max_pairs=3",
        "eval.max_new_tokens=6",
        "eval.rerank=true",
        "eval.rerank_max_users=2",
        "eval.num_candidates=3",
        "eval.rerank_retriever=popularity",
        "eval.wandb=false",
    ]
    try:
        hf = run(compose_cfg("evaluate", common), tmp_path / "hf")
        vl = run(compose_cfg("evaluate", [*common, "eval.backend=vllm"]), tmp_path / "vllm")
    finally:
        release_engines()
    (llm,) = fake_vllm.LLM.instances  # one engine for both
    assert llm.kwargs["enable_lora"] is True and llm.kwargs["enable_prefix_caching"] is True
    assert all(
        c.lora_request is not None and c.lora_request.lora_path == str(trained / "train" / "adapter")
        for c in llm.calls
    )
    assert (hf["protocol"]["backend"], vl["protocol"]["backend"]) == ("hf", "vllm")
    rows = {
        b: [json.loads(line) for line in (tmp_path / b / "predictions.jsonl").read_text().splitlines()]
        for b in ("hf", "vllm")
    }
    assert len(rows["vllm"]) == 3
    for a, b in zip(rows["hf"], rows["vllm"], strict=True):
        assert (b["user_id"], b["item_id"], b["reasoning"], b["rating_argmax"]) == (
            a["user_id"],
            a["item_id"],
            a["reasoning"],
            a["rating_argmax"],
        )
        assert max(abs(a["probs"][k] - b["probs"][k]) for k in a["probs"]) < 1e-4
        assert abs(a["rating_expected"] - b["rating_expected"]) < 1e-4
    assert vl["rerank"]["backend"] == "vllm" and vl["rerank"]["users"] == hf["rerank"]["users"] == 2
    for key, value in hf["rerank"].items():
        if key.startswith(("before/", "after/")):
            assert vl["rerank"][key] == pytest.approx(value, abs=1e-9)


# ------------------------------------------------------------------ which pairs are scored


def _split_parts(trained):
    import pandas as pd

    split_dir = next((trained / "artifacts" / "data").glob("*/splits/*"))
    return {part: pd.read_parquet(split_dir / f"{part}.parquet") for part in ("train", "valid", "test")}


def _release_file(path, rows, bad_score_at: int | None = None):
    """A rating file in the EXP3RT release format for (user, item, rating) rows."""
    records = [
        {
            "user_id": u,
            "item_id": i,
            "user_persona": "[Like]\n- Good value.\n[Dislike]\n- None.",
            "item_synopsis": "[Like]\n- Sturdy.\n[Dislike]\n- Slow delivery.",
            "item_description": f"Title: Item {i}\nCategories: Things",
            "score": str(int(r)),
        }
        for u, i, r in rows
    ]
    if bad_score_at is not None:
        records[bad_score_at]["score"] = "11"
    path.write_text(json.dumps(records))
    return path


def _rows(frame):
    return list(zip(frame.user_id, frame.item_id, frame.rating, strict=True))


def test_the_split_path_scores_exactly_the_test_pairs_with_warm_from_training(trained, tmp_path):
    from exp3rt.cli.evaluate import run

    parts = _split_parts(trained)
    metrics = run(
        compose_cfg(
            "evaluate",
            [f"paths.artifacts_dir={trained}/artifacts", f"run_dir={trained}/train", "eval.mode=fast"],
        ),
        tmp_path / "ev",
    )
    preds = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    scored = {(p["user_id"], p["item_id"]) for p in preds}
    test = parts["test"]
    assert scored == set(zip(test.user_id, test.item_id, strict=True))
    assert not scored & set(zip(parts["train"].user_id, parts["train"].item_id, strict=True))
    counts = parts["train"].user_id.value_counts()
    assert all(p["warm"] == (counts.get(p["user_id"], 0) >= 5) for p in preds)
    assert metrics["protocol"]["warm"]["pairs_warm"] == sum(p["warm"] for p in preds)
    assert metrics["protocol"]["scored_split"] == "test" and metrics["protocol"]["split_pairs"] == len(test)
    assert (
        "No scored pair was in the student's or the baselines' training data"
        in (tmp_path / "ev" / "report.md").read_text()
    )


def test_a_test_file_with_training_pairs_is_refused_and_the_advice_runs(trained, tmp_path):
    """The EXP3RT release file scored after training on most of its pairs gave RMSE 0.04 on them with no
    warning. Now the overlap stops the run; eval.test_file_overlap=drop (as the message says) scores the
    rest."""
    from exp3rt.cli.evaluate import run
    from exp3rt.config import ConfigError

    parts = _split_parts(trained)
    rows = _rows(parts["train"].head(7)) + _rows(parts["test"].head(4))
    path = _release_file(tmp_path / "release.json", rows)
    base = [
        f"paths.artifacts_dir={trained}/artifacts",
        f"run_dir={trained}/train",
        "eval.mode=fast",
        f"eval.test_file={path}",
    ]
    with pytest.raises(
        ConfigError, match=r"7 of 11 pairs are in the data the student and the baselines trained on"
    ) as err:
        run(compose_cfg("evaluate", base), tmp_path / "refused")
    advice = str(err.value).split("pairs with ")[1].split(",")[0]
    assert advice == "eval.test_file_overlap=drop"
    metrics = run(compose_cfg("evaluate", [*base, advice]), tmp_path / "ev")
    assert metrics["protocol"]["overlap"] == {
        "file_pairs": 11,
        "in_train": 7,
        "in_valid": 0,
        "dropped": 7,
        "scored": 4,
    }
    preds = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert [(p["user_id"], p["item_id"]) for p in preds] == [(u, i) for u, i, _ in rows[7:]]
    assert metrics["rating"]["global_mean"]["n"] == 4
    assert "Dropped 7 of the file's 11 pairs" in (tmp_path / "ev" / "report.md").read_text()


def test_a_bad_test_file_record_names_the_evaluate_key_and_that_key_works(trained, tmp_path):
    from exp3rt.cli.evaluate import run
    from exp3rt.data.problems import DataError

    path = _release_file(
        tmp_path / "release.json", _rows(_split_parts(trained)["test"].head(5)), bad_score_at=2
    )
    base = [
        f"paths.artifacts_dir={trained}/artifacts",
        f"run_dir={trained}/train",
        "eval.mode=fast",
        f"eval.test_file={path}",
    ]
    with pytest.raises(DataError, match="field 'score': record 3:") as err:
        run(compose_cfg("evaluate", base), tmp_path / "strict")
    advice = str(err.value).split("(set ")[1].split(" to skip")[0]
    assert advice == "eval.test_file_strict=false"
    metrics = run(compose_cfg("evaluate", [*base, advice]), tmp_path / "lenient")
    assert (
        metrics["protocol"]["file"]["skipped_total"] == 1 and metrics["rating"]["student_expected"]["n"] == 4
    )


def test_eval_split_valid_without_a_validation_part_says_how_to_get_one(trained, tmp_path):
    from exp3rt.cli.evaluate import run
    from exp3rt.config import ConfigError

    with pytest.raises(
        ConfigError, match=r"has no validation pairs .*split.valid_ratio=0.1 eval.split=valid"
    ):
        run(
            compose_cfg(
                "evaluate",
                [
                    f"paths.artifacts_dir={trained}/artifacts",
                    f"run_dir={trained}/train",
                    "eval.mode=fast",
                    "eval.split=valid",
                ],
            ),
            tmp_path / "ev",
        )


def test_the_guard_refuses_a_training_pair_among_the_scored_ones():
    import pandas as pd

    from exp3rt.student.examples import SFTExample

    class Split:
        train = pd.DataFrame({"user_id": ["u"], "item_id": ["a"]})
        valid = pd.DataFrame({"user_id": ["v"], "item_id": ["b"]})
        test = pd.DataFrame({"user_id": ["u", "w"], "item_id": ["c", "d"]})

        def part(self, name):
            return getattr(self, name)

    def ex(u, i):
        return SFTExample("rating", "", "", "", {"user_id": u, "item_id": i})

    check_scored_pairs([ex("u", "c"), ex("w", "d")], Split(), "test")
    with pytest.raises(RuntimeError, match="1 pair\\(s\\) the student trained on"):
        check_scored_pairs([ex("u", "c"), ex("u", "a")], Split(), "test")
    with pytest.raises(RuntimeError, match="1 pair\\(s\\) the student trained on"):
        check_scored_pairs(
            [ex("v", "b")], Split(), "test"
        )  # validation pairs steer training: never test figures
    check_scored_pairs([ex("v", "b")], Split(), "valid")
    with pytest.raises(RuntimeError, match="1 outside the valid part"):
        check_scored_pairs([ex("w", "d")], Split(), "valid")
