"""Evaluate a trained student: reasoning then rating on test pairs, both readouts, baselines on the same
pairs, failure accounting, predictions, report and plots; optionally top-k reranking.

This module runs the evaluation (the trained run and its config, the test examples, predictions and
readouts, the reasoning budget); :mod:`exp3rt.evaluation.pairs` decides which pairs are scored and checks
that none was trained on, :mod:`exp3rt.evaluation.scoring` turns predictions into error tables (failure
fallbacks, baselines on the same pairs), :mod:`exp3rt.evaluation.report` writes and logs what it found
(predictions file, report.md, flat metrics, W&B) and :mod:`exp3rt.evaluation.rerank` reranks top-k
candidates.

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
from exp3rt.config import ConfigError, validate
from exp3rt.data.prepare import prepare_dataset
from exp3rt.data.splits import prepare_split
from exp3rt.devices import resolve_device
from exp3rt.evaluation import plots
from exp3rt.evaluation.pairs import check_scored_pairs, mark_warm, pair_of, scored_part, unseen_file_pairs
from exp3rt.evaluation.reasoning import reasoning_about_the_pair
from exp3rt.evaluation.report import generation_summary, log_to_wandb, report_markdown, write_predictions
from exp3rt.evaluation.rerank import rerank_candidates
from exp3rt.evaluation.scoring import (
    baseline_errors,
    default_rating_cfg,
    error_table,
    fallback_models,
    paired_errors,
    pairs_frame,
)
from exp3rt.inference.predict import estimate_rewrite, release_students
from exp3rt.inference.prediction import Prediction
from exp3rt.student.examples import build_examples, direct_ablation, rating_file_examples
from exp3rt.teacher.annotate import find_annotation_dir

log = logging.getLogger(__name__)


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
    estimate_rewrite(tcfg, ev)  # eval.compute_estimate on a student that writes no estimate: before any work
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
        wanted = {pair_of(e) for e in test_examples}
        direct_examples = [e for e in test_set(readout_ablation(tcfg, "fast"))[0] if pair_of(e) in wanted]
        attach_direct(
            preds, predict_fn(tcfg, adapter_dir, direct_examples, OmegaConf.merge(ev, {"mode": "fast"}))
        )
        direct_rows = {"student_direct_expected": "direct_expected", "student_direct_argmax": "direct_argmax"}
    train = split.train
    source["warm"] = mark_warm(preds, train, int(tcfg.split.warm_min_train))
    means = fallback_models(train, prepared.dataset.scale)
    policy = str(ev.failure_policy)
    pairs = pairs_frame(preds)
    baseline_preds: dict = {}
    rating = {
        "student_expected": error_table(preds, "expected", policy, means),
        "student_argmax": error_table(preds, "argmax", policy, means),
        **{k: error_table(preds, v, policy, means) for k, v in direct_rows.items()},
        **baseline_errors(
            train,
            pairs,
            prepared.dataset.scale,
            tcfg.get("baselines", {}).get("rating") or default_rating_cfg(),
            predictions=baseline_preds,
        ),
    }
    # the method against each model on the same pairs, with a paired bootstrap interval: is the gap more
    # than which pairs happened to be drawn?
    paired = paired_errors(
        preds,
        policy,
        means,
        {k: v for k, v in direct_rows.items() if k == "student_direct_expected"},
        baseline_preds,
    )
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
            # eval.compute_estimate: how many reasonings' estimates the tool changed before the readout
            "compute_estimate": bool(ev.get("compute_estimate")),
            "estimates_recomputed": sum(p.written is not None for p in preds),
            "seconds_per_pair": seconds / max(1, len(preds)),
        },
        "rating": rating,
        "paired": paired,
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
            tcfg,
            adapter_dir,
            ann_dir,
            prepared,
            split,
            ev,
            readout_ablation(tcfg, str(ev.rerank_mode)),
            out_dir=out_dir,
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
