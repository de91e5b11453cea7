"""Evaluate a trained student: reasoning then rating on test pairs, both readouts, baselines on the same
pairs, failure accounting, predictions, report and plots; optionally top-k reranking.

This module runs the evaluation (the trained run and its config, the scored pairs and their guards,
predictions and readouts, fallbacks and error tables); :mod:`exp3rt.evaluation.report` writes and logs
what it found (predictions file, report.md, flat metrics, W&B) and :mod:`exp3rt.evaluation.rerank`
reranks top-k candidates.

The trained run is identified by its saved ``config.yaml`` (never by parsing directory names): the
dataset, split, teacher/annotation groups, SFT and student settings come from there, so evaluation sees
exactly the prompts and rating mapping the student was trained with.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from exp3rt.artifacts import write_json_atomic, write_text_atomic
from exp3rt.baselines.runner import rating_errors
from exp3rt.config import ConfigError, FailurePolicy, RatingBaselinesConf, validate
from exp3rt.data.prepare import prepare_dataset
from exp3rt.data.splits import prepare_split
from exp3rt.devices import resolve_device
from exp3rt.evaluation import plots
from exp3rt.evaluation.reasoning import reasoning_about_the_pair
from exp3rt.evaluation.report import generation_summary, log_to_wandb, report_markdown, write_predictions
from exp3rt.evaluation.rerank import rerank_candidates
from exp3rt.inference.predict import release_students
from exp3rt.inference.prediction import Prediction  # noqa: F401 - also imported from here
from exp3rt.metrics import mae, rmse
from exp3rt.student.examples import build_examples, direct_ablation, rating_file_examples
from exp3rt.teacher.annotate import find_annotation_dir

log = logging.getLogger(__name__)

POLICIES = tuple(p.value for p in FailurePolicy)


def find_train_run(run_dir: str | None, adapter: str | None) -> tuple[Path, Path]:
    """(train run dir, adapter dir) from either; the run dir must hold the saved config.yaml."""
    if adapter:
        adapter_dir = Path(adapter)
        run = Path(run_dir) if run_dir else adapter_dir.parent
    elif run_dir:
        run = Path(run_dir)
        adapter_dir = run / "adapter"
    else:
        raise ConfigError(
            "exp3rt-evaluate needs run_dir=<an exp3rt-train run dir> or adapter=<adapter folder>"
        )
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(
            f"{run}/config.yaml is missing: run_dir must be an exp3rt-train run directory"
        )
    if not (adapter_dir / "adapter_config.json").is_file() and not (adapter_dir / "config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} holds neither a peft adapter nor a model")
    return run, adapter_dir


def load_train_config(run: Path, overrides: DictConfig | None = None) -> DictConfig:
    cfg = OmegaConf.load(run / "config.yaml")
    if overrides is not None:
        cfg = OmegaConf.merge(cfg, overrides)
    return validate(cfg)


def fallback_models(train: pd.DataFrame, scale=None) -> dict:
    """The failure policies' values: the ``user_mean``, ``item_mean`` and ``global_mean`` rating baselines
    (:mod:`exp3rt.baselines.rating`) fitted on the training split, so a filled failure gets exactly the
    rating the baseline row of the same name predicts (an unseen user or item: the global mean)."""
    # heavy: torch (the rating baselines)
    from exp3rt.baselines.rating import GlobalMean, ItemMean, UserMean

    return {m.name: m(scale).fit(train) for m in (UserMean, ItemMean, GlobalMean)}


def apply_fallback(
    value: float | None, policy: str, user_id: str, item_id: str, models: dict
) -> tuple[float | None, bool]:
    """The rating to score and whether the failure policy supplied it: the policy's baseline
    (:func:`fallback_models`) predicts the pair. ``exclude`` returns None: the pair is left out of the
    error metrics and counted, never scored as zero error."""
    if value is not None:
        return value, False
    if policy == "exclude":
        return None, True
    return float(models[policy].predict([user_id], [item_id])[0]), True


def error_table(preds: list[Prediction], which: str, policy: str, models: dict) -> dict:
    """RMSE/MAE of one readout (``argmax`` | ``expected`` | ``direct_*``) overall, warm and cold, with the
    number of failures and how they were handled (``models``: :func:`fallback_models`)."""
    policy = FailurePolicy(policy)  # a value the schema checked; a caller's typo is a ValueError naming it
    missing = [p for p in preds if getattr(p, f"rating_{which}") is None]
    filled = {}  # (user, item) -> the policy's baseline prediction, one predict call for every failure
    if missing and policy != "exclude":
        values = models[policy].predict([p.user_id for p in missing], [p.item_id for p in missing])
        filled = {(p.user_id, p.item_id): float(v) for p, v in zip(missing, values, strict=True)}
    truth, pred, warm, failures = [], [], [], 0
    for p in preds:
        value, fell_back = getattr(p, f"rating_{which}"), False
        if value is None:
            value, fell_back = filled.get((p.user_id, p.item_id)), True
        failures += int(fell_back)
        if value is None:
            continue
        truth.append(p.truth)
        pred.append(value)
        warm.append(p.warm)
    truth_a, pred_a, warm_a = np.array(truth), np.array(pred), np.array(warm, dtype=bool)
    out = {
        "n": len(preds),
        "scored": int(len(truth_a)),
        "failures": failures,
        "failure_policy": policy,
        "parse_rate": 1.0 - failures / max(1, len(preds)),
    }
    out["rmse"] = rmse(truth_a, pred_a) if len(truth_a) else None
    out["mae"] = mae(truth_a, pred_a) if len(truth_a) else None
    for tag, mask in (("warm", warm_a), ("cold", ~warm_a)):
        out[f"rmse_{tag}"] = rmse(truth_a[mask], pred_a[mask]) if mask.any() else None
        out[f"mae_{tag}"] = mae(truth_a[mask], pred_a[mask]) if mask.any() else None
    return out


def baseline_errors(train: pd.DataFrame, pairs: pd.DataFrame, scale, cfg_rating) -> dict:
    # heavy: torch
    from exp3rt.baselines.rating import build_rating_baselines

    out = {}
    truth = pairs["rating"].to_numpy(dtype=float)
    warm = pairs["warm"].to_numpy(dtype=bool)
    for name, model in build_rating_baselines(cfg_rating, scale).items():
        model.fit(train)
        pred = np.asarray(
            model.predict(pairs["user_id"].to_numpy(), pairs["item_id"].to_numpy()), dtype=float
        )
        out[name] = rating_errors(truth, pred, warm)
    return out


def evaluate(
    ev: DictConfig,
    out_dir: Path,
    *,
    run_dir: str | Path | None = None,
    adapter: str | Path | None = None,
    predict_fn=None,
    wandb_into_train_run: bool = False,
) -> dict:
    """The whole exp3rt-evaluate run (minus Hydra) of the student in ``run_dir`` (or ``adapter``) with the
    ``eval`` settings ``ev``; the student is loaded once and freed at the end. ``wandb_into_train_run``:
    W&B logs into the training's run (its ``wandb_run_id.txt``) instead of a new one."""
    try:
        return _evaluate(ev, out_dir, run_dir, adapter, predict_fn, wandb_into_train_run)
    finally:
        release_students()


def trained_on(run: Path, tcfg, prepared, split) -> Path:
    """The teacher's artifacts the student of ``run`` learnt from: the directory its train.json records,
    else (a run from before that was recorded, or moved artifacts) the one its config names."""
    recorded = (
        json.loads((run / "train.json").read_text()).get("annotations_dir")
        if (run / "train.json").is_file()
        else None
    )
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    return find_annotation_dir(tcfg, prepared, split)


def _evaluate(
    ev: DictConfig, out_dir: Path, run_dir, adapter, predict_fn, wandb_into_train_run: bool
) -> dict:
    run, adapter_dir = find_train_run(run_dir, adapter)
    tcfg = load_train_config(run)
    out_dir.mkdir(parents=True, exist_ok=True)
    prepared = prepare_dataset(tcfg.dataset, tcfg.paths.data_dir)
    split = prepare_split(prepared, tcfg.split)
    ann_dir = trained_on(run, tcfg, prepared, split)
    sft = OmegaConf.merge(tcfg.sft, {"tasks": ["rating"]})
    # the test examples are never resampled (merging {} would keep the training weights)
    sft.task_weights = {}

    part = scored_part(ev, split, tcfg)

    def test_set(ablation) -> tuple[list, dict]:
        if ev.get("test_file"):  # e.g. the EXP3RT release rating_test.json: its own profiles and descriptions
            exs, file_report = rating_file_examples(
                ev.test_file,
                str(tcfg.dataset.domain),
                prepared.dataset.scale,
                tcfg.sft,
                ablation,
                tcfg.student_prompt,
                strict=bool(ev.test_file_strict),
            )
            exs, overlap = unseen_file_pairs(exs, split, str(ev.test_file_overlap), str(ev.test_file))
            return exs, {
                "source": f"test file {ev.test_file}",
                "scored_split": "test file",
                "file": file_report,
                "overlap": overlap,
            }
        examples = build_examples(
            ann_dir,
            split,
            prepared.dataset.items,
            str(tcfg.dataset.domain),
            prepared.dataset.scale,
            sft,
            ablation=ablation,
            prompt=tcfg.student_prompt,
        )
        return (
            [e for e in examples.get(part, []) if e.task == "rating"],
            {
                "source": f"{part} split ({tcfg.split.strategy})",
                "scored_split": part,
                "split_pairs": int(len(split.part(part))),
                "skipped": examples.report.get("skipped", {}),
            },
        )

    test_examples, source = test_set(readout_ablation(tcfg, str(ev.mode)))
    if ev.get("max_pairs"):
        test_examples = test_examples[: int(ev.max_pairs)]
    if not test_examples:
        raise ConfigError(
            f"no {part} rating examples for dataset '{tcfg.dataset.name}' (split {tcfg.split.strategy})"
        )
    check_scored_pairs(test_examples, split, part if not ev.get("test_file") else "test file")
    budget = reasoning_budget(tcfg, ev, run)
    ev = OmegaConf.merge(ev, {"max_new_tokens": budget["max_new_tokens"]})
    t0 = time.perf_counter()
    preds = predict_fn(tcfg, adapter_dir, test_examples, ev)
    seconds = time.perf_counter() - t0
    direct_rows = {}
    if (
        trained_direct(tcfg) and str(ev.mode) != "fast"
    ):  # the same pairs read out once more, after the rating-only prompt
        wanted = {(str(e.meta["user_id"]), str(e.meta["item_id"])) for e in test_examples}
        direct_examples = [
            e
            for e in test_set(readout_ablation(tcfg, "fast"))[0]
            if (str(e.meta["user_id"]), str(e.meta["item_id"])) in wanted
        ]
        attach_direct(
            preds, predict_fn(tcfg, adapter_dir, direct_examples, OmegaConf.merge(ev, {"mode": "fast"}))
        )
        direct_rows = {"student_direct_expected": "direct_expected", "student_direct_argmax": "direct_argmax"}
    train = split.train
    source["warm"] = mark_warm(preds, train, int(tcfg.split.warm_min_train))
    means = fallback_models(train, prepared.dataset.scale)
    policy = str(ev.failure_policy)
    pairs = pd.DataFrame(
        {
            "user_id": [p.user_id for p in preds],
            "item_id": [p.item_id for p in preds],
            "rating": [p.truth for p in preds],
            "warm": [p.warm for p in preds],
        }
    )
    rating = {
        "student_expected": error_table(preds, "expected", policy, means),
        "student_argmax": error_table(preds, "argmax", policy, means),
        **{k: error_table(preds, v, policy, means) for k, v in direct_rows.items()},
        **baseline_errors(
            train,
            pairs,
            prepared.dataset.scale,
            tcfg.get("baselines", {}).get("rating") or _default_rating_cfg(),
        ),
    }
    metrics = {
        "task": "evaluate",
        "train_run": str(run),
        "adapter": str(adapter_dir),
        "dataset": prepared.dataset.summary(),
        "protocol": {
            "mode": str(ev.mode),
            "failure_policy": policy,
            "pairs": len(preds),
            **source,
            "backend": str(ev.get("backend") or "hf"),
            **inference_device(ev),
            "readout": "next-token distribution over the valid rating tokens after the reasoning",
            "seconds_per_pair": seconds / max(1, len(preds)),
        },
        "rating": rating,
        "generation": generation_summary(preds, budget),
    }
    # on the synthetic world: is the reasoning about the pair? (a student trained without reasoning writes
    # none: no figures then, rather than a recall of 0)
    if str(ev.mode) != "fast" and any(p.reasoning for p in preds):
        rationale = ann_dir / "rationale.parquet"
        teacher = pd.read_parquet(rationale) if rationale.is_file() else None
        if teacher is not None and "status" in teacher:
            teacher = teacher[teacher["status"] == "ok"]
        about = reasoning_about_the_pair(
            prepared.dataset, [(p.user_id, p.item_id, p.reasoning) for p in preds], teacher
        )
        if about is not None:
            metrics["reasoning"] = about
    if metrics["generation"]["cut"]:
        log.warning("%s", metrics["generation"]["warning"])
    write_predictions(preds, out_dir / "predictions.jsonl")
    truth = np.array([p.truth for p in preds])
    expected = np.array([p.rating_expected if p.rating_expected is not None else np.nan for p in preds])
    ok = ~np.isnan(expected)
    levels = prepared.dataset.scale.levels
    plots.rating_distributions(
        truth[ok], expected[ok], levels, out_dir / "rating_distributions.png", "true vs predicted"
    )
    plots.confusion(truth[ok], expected[ok], levels, out_dir / "confusion.png", "confusion (expected rating)")
    plots.calibration(truth[ok], expected[ok], out_dir / "calibration.png", "calibration")
    if ev.get("rerank"):
        metrics["rerank"] = rerank_candidates(
            tcfg, adapter_dir, ann_dir, prepared, split, ev, readout_ablation(tcfg, str(ev.rerank_mode))
        )
    example = next((p for p in preds if p.reasoning), preds[0] if preds else None)
    write_text_atomic(out_dir / "report.md", report_markdown(metrics, example))
    write_json_atomic(out_dir / "metrics.json", metrics)  # last: the file that says the evaluation finished
    if ev.get("wandb") and tcfg.logger.get("wandb", True) and tcfg.logger.mode != "disabled":
        run_id = None
        if wandb_into_train_run and (run / "wandb_run_id.txt").is_file():
            run_id = (run / "wandb_run_id.txt").read_text().strip()
        metrics["wandb_dir"] = log_to_wandb(tcfg, metrics, preds, out_dir, int(ev.wandb_rows), run_id=run_id)
    return metrics


def scored_part(ev, split, tcfg) -> str:
    """The split part exp3rt-evaluate scores (``eval.split``), checked against what the split holds."""
    part = str(ev.get("split") or "test")
    if ev.get("test_file") and part != "test":
        raise ConfigError(
            f"eval.test_file scores the pairs of {ev.test_file}; eval.split={part} does not apply to it: "
            "leave eval.split at test, or drop eval.test_file to score the split's own validation pairs"
        )
    if part == "valid" and len(split.valid) == 0:
        raise ConfigError(
            f"eval.split=valid, but split '{tcfg.split.strategy}' of dataset '{tcfg.dataset.name}' has "
            "no validation "
            f"pairs ({split.directory}): train on a split with a validation part, e.g. exp3rt-pipeline "
            "split.valid_ratio=0.1 "
            f"eval.split=valid (the student is retrained on the new split)"
        )
    return part


def _pairs(frame: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(frame["user_id"].astype(str), frame["item_id"].astype(str), strict=True))


def _pair_of(example) -> tuple[str, str]:
    return str(example.meta["user_id"]), str(example.meta["item_id"])


def unseen_file_pairs(examples: list, split, policy: str, path: str) -> tuple[list, dict]:
    """``eval.test_file``'s examples less the pairs the student and the baselines trained on (the split's
    train and valid parts). With ``eval.test_file_overlap=error`` (default) any such pair stops the run:
    a memorised rating is no test (seen on the EXP3RT release: 1,631 of 2,049 file pairs were training pairs).
    Returns the examples kept and the counts, which metrics.json records."""
    train, valid = _pairs(split.train), _pairs(split.valid)
    in_train = sum(_pair_of(e) in train for e in examples)
    in_valid = sum(_pair_of(e) in valid for e in examples)
    seen = train | valid
    kept = [e for e in examples if _pair_of(e) not in seen]
    counts = {
        "file_pairs": len(examples),
        "in_train": int(in_train),
        "in_valid": int(in_valid),
        "dropped": 0,
        "scored": len(kept),
    }
    if in_train or in_valid:
        if policy == "error":
            raise ConfigError(
                f"eval.test_file={path}: {in_train + in_valid} of {len(examples)} pairs are in the "
                "data the student and "
                f"the baselines trained on ({in_train} training, {in_valid} validation pairs of its "
                "split), and scoring "
                f"them would report memorised ratings. Score only the {len(kept)} unseen pairs with "
                "eval.test_file_overlap=drop, or evaluate on the split's own test pairs (leave "
                "eval.test_file unset)"
            )
        counts["dropped"] = in_train + in_valid
        log.warning(
            "eval.test_file: dropped %d of %d pairs that the student trained on (%d training, %d "
            "validation); "
            "scoring the %d unseen ones",
            in_train + in_valid,
            len(examples),
            in_train,
            in_valid,
            len(kept),
        )
    return kept, counts


def check_scored_pairs(examples: list, split, part: str) -> None:
    """The guarantee behind every figure: no scored pair was a training pair of the student or the
    baselines (the split's train part; for test scores, its valid part too), and split-scored pairs are
    exactly pairs of that part. Raises RuntimeError (a bug, never a user error) otherwise."""
    scored = {_pair_of(e) for e in examples}
    banned = _pairs(split.train) | (_pairs(split.valid) if part != "valid" else set())
    leaked = scored & banned
    outside = scored - _pairs(split.part(part)) if part in ("train", "valid", "test") else set()
    if leaked or outside:
        example = sorted(leaked or outside)[0]
        raise RuntimeError(
            f"refusing to score: {len(leaked)} pair(s) the student trained on and {len(outside)} outside "
            f"the {part} part, e.g. {example}"
        )


def mark_warm(preds: list[Prediction], train: pd.DataFrame, warm_min_train: int) -> dict:
    """Set each prediction's warm flag from the training data actually used (a user with at least
    ``split.warm_min_train`` training ratings is warm) and return the counts for metrics.json."""
    counts = train["user_id"].astype(str).value_counts()
    users_cold = set()
    for p in preds:
        p.warm = int(counts.get(str(p.user_id), 0)) >= warm_min_train
        if not p.warm:
            users_cold.add(p.user_id)
    users = {p.user_id for p in preds}
    return {
        "warm_min_train": warm_min_train,
        "pairs_warm": sum(p.warm for p in preds),
        "pairs_cold": sum(not p.warm for p in preds),
        "users": len(users),
        "users_cold": len(users_cold),
    }


def inference_device(ev) -> dict:
    """Where the hf backend runs the student (``eval.device`` resolved) and whether LoRA was merged."""
    if str(ev.get("backend") or "hf") != "hf":
        return {}

    return {
        "device": str(resolve_device(ev.get("device", "auto"))),
        "merge_lora": bool(ev.get("merge_lora", True)),
    }


def trained_direct(tcfg) -> bool:
    """Whether this student learnt the rating-only form beside reasoning (sft task ``rating_direct``)."""
    return "rating_direct" in list(tcfg.sft.tasks) and bool(tcfg.ablation.reasoning)


def readout_ablation(tcfg, mode: str):
    """The ablation a readout in ``mode`` prompts with: fast mode on a rating_direct student uses the
    rating-only prompt it was trained on; everything else the training ablation."""
    return direct_ablation(tcfg.ablation) if mode == "fast" and trained_direct(tcfg) else tcfg.ablation


def attach_direct(preds: list[Prediction], direct: list[Prediction]) -> None:
    """Copy each pair's rating-only readout onto its prediction (pairs the direct prompt could not be built
    for keep None and count as failures)."""
    by_pair = {(d.user_id, d.item_id): d for d in direct}
    for p in preds:
        d = by_pair.get((p.user_id, p.item_id))
        if d is not None:
            p.direct_probs, p.rating_direct_argmax, p.rating_direct_expected = (
                d.probs,
                d.rating_argmax,
                d.rating_expected,
            )


REASONING_MARGIN = 16  # tokens beyond the longest training answer


def reasoning_budget(tcfg, ev, run: Path) -> dict:
    """``max_new_tokens`` for the reasoning: ``eval.max_new_tokens`` when set, else the longest answer the
    student trained on (train.json's ``answer_tokens``) plus a margin, else ``student.max_new_tokens``.

    A budget below the training answers cuts every reasoning before its conclusion, and the readout
    then follows an unfinished text (seen with SmolLM2: answers of ~140 tokens, 96 allowed): logged."""
    trained = None
    if (run / "train.json").is_file():
        trained = json.loads((run / "train.json").read_text()).get("answer_tokens")
    longest = int(trained["max"]) if trained else None
    if ev.get("max_new_tokens"):
        value, source = int(ev.max_new_tokens), "eval.max_new_tokens"
        if longest and value < longest:
            log.warning(
                "eval.max_new_tokens=%d is below the longest answer the student trained on (%d tokens, "
                "p99 %d): reasonings will be cut before their conclusion",
                value,
                longest,
                trained["p99"],
            )
    elif longest:
        value, source = (
            longest + REASONING_MARGIN,
            f"longest training answer ({longest}) + {REASONING_MARGIN}",
        )
    else:
        value, source = int(tcfg.student.max_new_tokens), "student.max_new_tokens"
    return {"max_new_tokens": value, "source": source, "training_answer_tokens": trained}


def _default_rating_cfg():
    return OmegaConf.structured(RatingBaselinesConf)
