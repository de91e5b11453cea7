"""``exp3rt-pipeline`` (also ``python -m exp3rt``): data → baselines → annotate → train → evaluate.

exp3rt-pipeline                                   # the demo (synthetic world, extractive teacher,
                                                  # tiny student)
exp3rt-pipeline experiment=demo_smollm            # SmolLM2-135M-Instruct student
exp3rt-pipeline experiment=paper_imdb dry_run=true   # compose + validate a cluster preset here
exp3rt-pipeline stages=[evaluate] eval.rerank_mode=full   # only re-evaluate (the student is found by hash)
exp3rt-pipeline -m ablation=full,no_reasoning hydra/launcher=submitit_local
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from exp3rt import CONF_DIR
from exp3rt.cli.common import fail_cleanly
from exp3rt.config import ConfigError, validate
from exp3rt.evaluation.report import markdown_table
from exp3rt.pipeline import run_pipeline
from exp3rt.threads import apply_threads

log = logging.getLogger("exp3rt.pipeline")


def summary(metrics: dict, out_dir: Path) -> str:
    """The table a user reads first: the student against the rating baselines on the same test pairs,
    reranking before/after, one explanation, and where the report is."""
    lines = []
    ds = metrics.get("dataset") or {}
    proto = metrics.get("protocol") or {}
    rating = metrics.get("rating") or {}
    if ds:
        tag = " (SYNTHETIC world)" if ds.get("synthetic") else ""
        if proto:
            where = f", student on {proto['device']}" if proto.get("device") else ""
            lines.append(
                f"{ds.get('name')}{tag}: {proto.get('pairs')} pairs from the "
                f"{proto.get('source', 'test split')}{where}"
            )
            if proto.get("scored_split") == "valid":
                lines.append(
                    "VALIDATION pairs (eval.split=valid): what a search optimises, not figures to report"
                )
        else:  # e.g. stages=[baselines,annotate] before a GPU job: no student was evaluated
            lines.append(
                f"{ds.get('name')}{tag}: no student evaluated in this run (the evaluate stage did not run); "
                f"rating baselines on the whole test split"
            )
            rating = metrics.get("baselines_rating") or {}
    rows = [
        [name, r.get("rmse"), r.get("mae"), r.get("parse_rate", 1.0), r.get("failures", 0)]
        for name, r in rating.items()
    ]
    if rows:
        lines.append(markdown_table(["model", "RMSE", "MAE", "parse rate", "failures"], rows))
        lines += readout_notes(rating, metrics.get("reasoning") or {})
    gen = metrics.get("generation") or {}
    if gen.get("warning"):
        lines.append(f"WARNING: {gen['warning']}")
    rr = metrics.get("rerank") or {}
    if rr:
        keys = [k for k in ("ndcg@10", "recall@10", "hit@10", "ndcg@5") if f"before/{k}" in rr]
        lines.append(
            f"\nTop-{rr.get('num_candidates')} reranking of {Path(str(rr.get('retriever'))).stem} candidates "
            f"({rr.get('users')} users, {rr.get('mode')} mode, {rr.get('seconds_per_user', 0):.3f} s/user)"
        )
        lines.append(
            markdown_table(
                ["metric", "first stage", "reranked"],
                [[k, rr[f"before/{k}"], rr.get(f"after/{k}")] for k in keys],
            )
        )
        if "before/ndcg@10" in rr and (rr.get("after/ndcg@10") or 0.0) < rr["before/ndcg@10"]:
            lines.append(
                "Reranking by this student LOWERED nDCG@10: it does not show the method working here."
            )
    ex = metrics.get("example")
    if ex:
        lines.append(
            f"\nExample: user {ex['user_id']}, item {ex['item_id']}, true {ex['truth']:g}, "
            f"predicted {ex['expected']:.2f}\n  {ex['reasoning'][:400]}"
        )
    stages = metrics.get("stages") or {}
    if stages:
        lines.append(
            "\nstages: "
            + ", ".join(f"{s} {r.get('status')} ({r.get('seconds')} s)" for s, r in stages.items())
        )
    report = out_dir / "report.md"
    lines.append(f"report: {report if report.is_file() else out_dir / 'metrics.json'}")
    return "\n".join(lines)


def readout_notes(rating: dict, about: dict) -> list[str]:
    """Say in words which rows are EXP3RT's method and which are not, and whether the student beat the
    best rating baseline with it; on the synthetic world, whether its reasoning is about the pair."""
    notes = []
    method = (rating.get("student_expected") or {}).get("rmse")
    baselines = {
        k: r.get("rmse")
        for k, r in rating.items()
        if not k.startswith("student") and r.get("rmse") is not None
    }
    if method is not None:
        line = "student_expected / student_argmax are the method (reasoning, then the rating read after it)"
        if baselines:
            best = min(baselines, key=baselines.get)
            verdict = "beats" if method < baselines[best] else "does NOT beat"
            line += f"; it {verdict} the best baseline ({best} {baselines[best]:.4f})"
        notes.append(line + ".")
    if any(k.startswith("student_direct") for k in rating):
        notes.append(
            "student_direct_* read the rating right after a rating-only prompt, no reasoning: a check of "
            "the readout, not EXP3RT's method."
        )
    if about.get("aspect_recall") is not None:
        notes.append(
            f"Reasoning about the pair: aspect precision {about['aspect_precision'] or 0:.2f}, recall "
            f"{about['aspect_recall']:.2f}, distinct texts {about['distinct_share'] or 0:.2f}"
            + (
                f" (teacher: {about['teacher_aspect_precision']:.2f} / {about['teacher_aspect_recall']:.2f})"
                if about.get("teacher_aspect_precision") is not None
                else ""
            )
            + "."
        )
    return notes


def hydra_info() -> dict:
    try:
        hc = HydraConfig.get()
    except ValueError:
        return {}
    return {
        "choices": {
            k: v for k, v in OmegaConf.to_container(hc.runtime.choices).items() if not k.startswith("hydra/")
        },
        "overrides": list(hc.overrides.task),
        "job_num": hc.job.get("num"),
    }


def run(cfg: DictConfig, out_dir: Path) -> dict:
    cfg = validate(cfg)
    apply_threads(cfg)  # before any torch work
    metrics = run_pipeline(cfg, out_dir, hydra_info())
    if metrics.get("dry_run"):
        print(dry_run_summary(metrics))
    elif metrics:
        print(summary(metrics, out_dir))
    return metrics


def dry_run_summary(m: dict) -> str:
    import json

    return "dry run (nothing trained, no teacher called):\n" + json.dumps(
        {k: v for k, v in m.items() if k not in ("task",)}, indent=2, default=str
    )


@hydra.main(config_path=str(CONF_DIR), config_name="pipeline", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    with fail_cleanly(log):
        check_search_split(cfg)
        metrics = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    return objective_value(cfg, metrics)


def searching() -> str | None:
    """The Hydra sweeper that optimises this run's returned objective (Optuna, Nevergrad, Ax), if any.
    (A W&B sweep's method is not visible to its runs: the search sweeps in sweeps/ fix eval.split=valid.)"""
    try:
        target = str(OmegaConf.select(HydraConfig.get(), "sweeper._target_") or "")
    except ValueError:
        return None
    short = target.rsplit(".", 1)[-1]
    return (
        f"the Hydra sweeper {short}"
        if any(n in target.lower() for n in ("optuna", "nevergrad", ".ax"))
        else None
    )


def check_search_split(cfg: DictConfig) -> None:
    """A search optimises what it measures: it must never measure the test pairs (issue: the Optuna
    objective used to be the test RMSE). Refused before any work, with the keys that fix it."""
    who = searching()
    if who and str(cfg.eval.get("split", "test")) != "valid":
        raise ConfigError(
            f"{who} optimises the objective {cfg.objective}, which "
            f"eval.split={cfg.eval.get('split', 'test')} measures on "
            "test pairs; a search must not read the test set: pass eval.split=valid "
            "split.valid_ratio=0.1, then report "
            "the chosen trial once with eval.split=test"
        )
    if who and float(cfg.split.valid_ratio) <= 0 and cfg.split.get("leave_n_out") is None:
        raise ConfigError(
            f"{who} measures the objective on validation pairs, but split.valid_ratio=0 leaves none: "
            "pass split.valid_ratio=0.1"
        )


def objective_value(cfg: DictConfig, metrics: dict) -> float | None:
    """What a sweeper (Optuna) minimises: ``cfg.objective`` looked up in the run's flat metrics. A run
    without the evaluate stage has none (said at INFO); a finished evaluation without it is an error
    (e.g. a misspelt objective), since the sweeper would get no value."""
    flat = metrics.get("flat") or {}
    value = flat.get(str(cfg.objective))
    if value is None and "evaluate" not in (metrics.get("stages") or {}):
        log.info("objective %s: no value, the evaluate stage was not part of this run", cfg.objective)
    elif value is None and flat:
        log.error(
            "objective %s is not among this run's metrics (e.g. %s): a sweeper gets no value",
            cfg.objective,
            ", ".join(sorted(k for k in flat if k.endswith("/rmse"))[:8]),
        )
    return float(value) if value is not None else None


if __name__ == "__main__":
    main()
