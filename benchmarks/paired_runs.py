"""Is a gap between two models more than which test pairs happened to be drawn? Paired bootstrap intervals
(``exp3rt.metrics.paired_rmse``) of finished runs, on the pairs each run scored:

* each run's ``student_expected`` against its rating baselines and its rating-only readout: read from the
  run's metrics.json ("paired", written by every evaluation since it existed) or, for an older run,
  recomputed from its predictions.jsonl with the baselines refitted on its training split (the same
  config and seed, so the same predictions: the refitted RMSEs are checked against the recorded ones);
* with ``--against``, each run's ``student_expected`` against another run's on the pairs both scored,
  e.g. the full student against ``ablation=no_reasoning`` at the same seed.

RUN is a pipeline run directory (its pipeline.json names the evaluation) or an evaluation directory.

    python benchmarks/paired_runs.py RUN [RUN ...] [--against RUN [RUN ...]] [--models biased_mf user_mean]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exp3rt.inference.prediction import Prediction  # noqa: E402
from exp3rt.metrics import paired_rmse  # noqa: E402


def evaluation_dir(run: Path) -> Path:
    """The evaluation directory of a pipeline run, or ``run`` itself when it is one."""
    if (run / "predictions.jsonl").is_file():
        return run
    record = run / "pipeline.json"
    if record.is_file():
        d = (json.loads(record.read_text()).get("stages") or {}).get("evaluate", {}).get("dir")
        if d and (Path(d) / "predictions.jsonl").is_file():
            return Path(d)
    sys.exit(f"{run}: neither an evaluation directory (predictions.jsonl) nor a pipeline run that evaluated")


def predictions(ev_dir: Path) -> list[Prediction]:
    names = {f.name for f in fields(Prediction)}
    rows = [json.loads(line) for line in (ev_dir / "predictions.jsonl").read_text().splitlines() if line]
    return [Prediction(**{k: v for k, v in r.items() if k in names}) for r in rows]


def within(ev_dir: Path) -> dict:
    """The run's own paired table: recorded, or recomputed for a run evaluated before it was written."""
    metrics = json.loads((ev_dir / "metrics.json").read_text())
    if metrics.get("paired"):
        return metrics["paired"]
    # heavy: torch (the rating baselines)
    from exp3rt.data.prepare import prepare_dataset
    from exp3rt.data.splits import prepare_split
    from exp3rt.evaluation.evaluate import load_train_config
    from exp3rt.evaluation.scoring import (
        baseline_errors,
        default_rating_cfg,
        fallback_models,
        paired_errors,
        pairs_frame,
    )

    tcfg = load_train_config(Path(metrics["train_run"]))
    prepared = prepare_dataset(tcfg.dataset, tcfg.paths.data_dir)
    split = prepare_split(prepared, tcfg.split)
    preds = predictions(ev_dir)
    pairs = pairs_frame(preds)
    refit: dict = {}
    errors = baseline_errors(
        split.train,
        pairs,
        prepared.dataset.scale,
        tcfg.get("baselines", {}).get("rating") or default_rating_cfg(),
        predictions=refit,
    )
    for name, r in errors.items():
        recorded = (metrics["rating"].get(name) or {}).get("rmse")
        if recorded is not None and not math.isclose(r["rmse"], recorded, abs_tol=1e-6):
            sys.exit(f"{ev_dir}: refitted {name} scores {r['rmse']:.6f}, the run recorded {recorded:.6f}")
    direct = (
        {"student_direct_expected": "direct_expected"}
        if "student_direct_expected" in metrics["rating"]
        else {}
    )
    policy = str((metrics.get("protocol") or {}).get("failure_policy") or "user_mean")
    return paired_errors(preds, policy, fallback_models(split.train, prepared.dataset.scale), direct, refit)


def across(a_dir: Path, b_dir: Path) -> dict:
    """``student_expected`` of run a against run b's, on the pairs both read out."""
    a = {(p.user_id, p.item_id): p for p in predictions(a_dir) if p.rating_expected is not None}
    b = {(p.user_id, p.item_id): p for p in predictions(b_dir) if p.rating_expected is not None}
    both = [k for k in a if k in b]
    if len(both) < 2:
        sys.exit(f"{a_dir} and {b_dir} share {len(both)} scored pairs: nothing to compare")
    if any(a[k].truth != b[k].truth for k in both):
        sys.exit(f"{a_dir} and {b_dir} disagree on the true rating of a shared pair: not the same test set")
    truth = np.array([a[k].truth for k in both])
    return paired_rmse(truth, [a[k].rating_expected for k in both], [b[k].rating_expected for k in both])


def line(label: str, r: dict) -> str:
    return (
        f"| {label} | {r['n']} | {r['rmse_a']:.4f} | {r['rmse_b']:.4f} | {r['rmse_diff']:+.4f} | "
        f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | {r['share_a_better']:.3f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--against", type=Path, nargs="*", default=[], help="one run per RUN, in the same order")
    ap.add_argument(
        "--models",
        nargs="*",
        default=["biased_mf", "user_mean", "student_direct_expected"],
        help="the models each run's student is set against (paired table names)",
    )
    args = ap.parse_args()
    if args.against and len(args.against) != len(args.runs):
        sys.exit(f"--against names {len(args.against)} runs for {len(args.runs)} RUNs: give one per RUN")
    head = ["student_expected vs", "pairs", "RMSE student", "RMSE other", "difference", "95% interval"]
    print("| " + " | ".join([*head, "student better"]) + " |")
    print("|---|---|---|---|---|---|---|")
    diffs: dict[str, list[float]] = {}
    for i, run in enumerate(args.runs):
        ev = evaluation_dir(run)
        table = within(ev)
        for model in args.models:
            r = table.get(f"student_expected_vs_{model}")
            if r is not None:
                print(line(f"{model} ({run.name})", r))
                diffs.setdefault(model, []).append(r["rmse_diff"])
        if args.against:
            other = args.against[i]
            r = across(ev, evaluation_dir(other))
            print(line(f"{other.name}'s student ({run.name})", r))
            diffs.setdefault("the --against runs", []).append(r["rmse_diff"])
    if len(args.runs) > 1:
        print()
        for model, d in diffs.items():
            sd = float(np.std(d, ddof=1)) if len(d) > 1 else float("nan")
            print(f"mean difference vs {model} over {len(d)} runs: {np.mean(d):+.4f} (sd {sd:.4f})")


if __name__ == "__main__":
    main()
