"""The reporting side of exp3rt-evaluate: what turns a finished evaluation into files and logs — the
predictions file, ``report.md`` (:func:`report_markdown`), the generation summary in metrics.json, the flat
``section/name/key`` numbers a W&B sweep or dashboard uses (:func:`flat_metrics`) and the W&B run
(:func:`log_to_wandb`). :mod:`exp3rt.evaluation.evaluate` runs the evaluation and calls these.

Plain markdown tables (:mod:`exp3rt.tables`) and the baselines table (:mod:`exp3rt.baselines.report`) are
also importable from here, under the names the evaluation used first."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from exp3rt.artifacts import atomic_path, scrub_secrets, to_container
from exp3rt.baselines.report import baselines_report  # noqa: F401 - the name the evaluation used first
from exp3rt.inference.prediction import Prediction
from exp3rt.tables import fmt, markdown_table  # noqa: F401 - fmt: the name the evaluation used first


def write_predictions(preds: list[Prediction], path: Path) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for p in preds:
            f.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")
    return path


def report_markdown(metrics: dict, example: Prediction | None) -> str:
    ds = metrics["dataset"]
    tag = " — SYNTHETIC data (exp3rt synthetic world)" if ds.get("synthetic") else ""
    lines = [
        f"# exp3rt evaluation: {ds['name']}{tag}",
        "",
        f"Student run: `{metrics['train_run']}`; {metrics['rating']['student_expected']['n']} pairs "
        "scored from the "
        f"{metrics['protocol'].get('source', 'test split')}; readout mode "
        f"{metrics['protocol']['mode']}; failure policy "
        f"{metrics['protocol']['failure_policy']}.",
        "",
    ]
    lines += scored_pairs_lines(metrics["protocol"])
    rows = []
    for name, r in metrics["rating"].items():
        rows.append(
            [
                name,
                r.get("rmse"),
                r.get("mae"),
                r.get("rmse_warm"),
                r.get("rmse_cold"),
                r.get("parse_rate", 1.0),
                r.get("failures", 0),
            ]
        )
    gen = metrics.get("generation") or {}
    if gen.get("finish"):
        lines += [
            f"Reasoning budget {gen['max_new_tokens']} tokens ({gen['source']}); reasonings ended: "
            + ", ".join(f"{k} {v}" for k, v in sorted(gen["finish"].items()))
            + ".",
            "",
        ]
        if gen.get("warning"):
            lines += [f"**Warning:** {gen['warning']}.", ""]
    if metrics["protocol"].get("compute_estimate"):
        lines += [
            f"`eval.compute_estimate`: the estimate of {metrics['protocol'].get('estimates_recomputed')} "
            f"of {metrics['protocol']['pairs']} "
            "reasonings was recomputed from the lists and averages they name before the rating was read "
            "(`predictions.jsonl` keeps the student's own text as `written`).",
            "",
        ]
    lines += reasoning_lines(metrics.get("reasoning"))
    lines += [
        "## Rating prediction",
        "",
        markdown_table(["model", "RMSE", "MAE", "RMSE warm", "RMSE cold", "parse rate", "failures"], rows),
        "",
    ]
    lines += paired_lines(metrics.get("paired"))
    if metrics.get("rerank"):
        rr = metrics["rerank"]
        keys = sorted(k.split("/", 1)[1] for k in rr if k.startswith("before/"))
        rows = [[k, rr.get(f"before/{k}"), rr.get(f"after/{k}")] for k in keys]
        lines += [
            f"## Top-{rr.get('num_candidates')} reranking ({rr.get('retriever')}, {rr.get('users')} users, "
            f"{rr.get('seconds_per_user', 0):.3f} s/user)",
            "",
            markdown_table(["metric", "first stage", "reranked"], rows),
            "",
        ]
        tails = ("_ci_low", "_ci_high", "_share_better")
        gains = sorted(k for k in rr if k.startswith("gain/") and not k.endswith(tails))
        if gains:
            lines += [
                "Reranked minus first stage, the mean over users with a paired bootstrap 95% interval: "
                + "; ".join(
                    f"{k.split('/', 1)[1]} {rr[k]:+.4f} [{rr[k + '_ci_low']:+.4f}, {rr[k + '_ci_high']:+.4f}]"
                    for k in gains
                )
                + ".",
                "",
            ]
        if "auc/student" in rr:
            lines += [
                "Separation of each user's relevant candidates from the rest (AUC over "
                f"{rr['auc/users']} users, 0.5 = none): the student's expected rating "
                f"{rr['auc/student']:.3f}, the first stage "
                f"{rr['auc/first_stage']:.3f}.",
                "",
            ]
        lines += tuning_lines(rr)
    if example is not None:
        expected = example.rating_expected
        if expected is not None:
            expected = round(expected, 2)
        lines += [
            "## Example explanation",
            "",
            f"User `{example.user_id}`, item `{example.item_id}`, true rating "
            f"{example.truth:g}, expected {expected}:",
            "",
            "> " + (example.reasoning or "(no reasoning)").replace("\n", "\n> "),
            "",
        ]
    lines += [
        "![rating distributions](rating_distributions.png)",
        "",
        "![confusion](confusion.png)",
        "",
        "![calibration](calibration.png)",
        "",
    ]
    return "\n".join(lines)


def paired_lines(paired: dict | None) -> list[str]:
    """The report's table of the method's readout against each model on the same pairs."""
    if not paired:
        return []
    rows = [
        [
            name.removeprefix("student_expected_vs_"),
            r["rmse_diff"],
            f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]",
            r["share_a_better"],
        ]
        for name, r in paired.items()
    ]
    return [
        "## The method against each model, paired",
        "",
        "`student_expected` RMSE minus the model's on the same pairs (negative: the student is better), with "
        "a paired bootstrap 95% interval over the pairs and the share of resamples in which the student is "
        "better.",
        "",
        markdown_table(["model", "RMSE difference", "95% interval", "student better"], rows),
        "",
    ]


def reasoning_lines(about: dict | None) -> list[str]:
    """The report's sentence on whether the reasoning is about the pair (synthetic world only)."""
    if not about:
        return []

    def pct(v):
        return "–" if v is None else f"{100 * v:.0f}%"

    text = (
        "Reasoning about the pair (synthetic ground truth): of the aspects the reasonings name, "
        f"{pct(about['aspect_precision'])} "
        f"are where this user's and this item's profiles meet (precision); of those meeting points, "
        f"{pct(about['aspect_recall'])} are named (recall); {pct(about['distinct_share'])} of the "
        "reasonings are distinct texts."
    )
    if about.get("teacher_aspect_precision") is not None:
        text += (
            f" The teacher's own rationales: precision {pct(about['teacher_aspect_precision'])}, "
            f"recall {pct(about['teacher_aspect_recall'])}."
        )
    return [text, ""]


def scored_pairs_lines(protocol: dict) -> list[str]:
    """The report's sentences on which pairs were scored: none seen in training, file overlap dropped,
    and how many users are cold (the EXP3RT release's pairs mostly are)."""
    lines = []
    warm = protocol.get("warm") or {}
    if warm:
        lines.append(
            f"No scored pair was in the student's or the baselines' training data. {warm['users_cold']} of "
            f"{warm['users']} users ({warm['pairs_cold']} pairs) are cold: fewer than "
            f"{warm['warm_min_train']} "
            "training ratings."
        )
    if protocol.get("scored_split") == "valid":
        lines.append(
            "These are VALIDATION pairs (eval.split=valid, what a search optimises): report test figures "
            "from a run with eval.split=test."
        )
    overlap = protocol.get("overlap") or {}
    if overlap.get("dropped"):
        lines.append(
            f"Dropped {overlap['dropped']} of the file's {overlap['file_pairs']} pairs that the "
            "student trained "
            f"on ({overlap['in_train']} training, {overlap['in_valid']} validation; "
            "eval.test_file_overlap=drop)."
        )
    return [" ".join(lines), ""] if lines else []


def generation_summary(preds: list[Prediction], budget: dict) -> dict:
    """How the reasonings ended (``finish`` counts), and a warning when some hit the token budget."""
    finish = Counter(p.finish for p in preds if p.finish is not None)
    cut = int(finish.get("length", 0))
    out = {
        "max_new_tokens": budget["max_new_tokens"],
        "source": budget["source"],
        "training_answer_tokens": budget["training_answer_tokens"],
        "finish": dict(finish),
        "cut": cut,
        "cut_rate": cut / max(1, sum(finish.values())) if finish else 0.0,
    }
    if cut:
        out["warning"] = (
            f"{cut} of {sum(finish.values())} reasonings hit max_new_tokens={budget['max_new_tokens']} "
            f"({budget['source']}) before the rating prefix: their readout follows an unfinished reasoning; "
            "raise eval.max_new_tokens"
        )
    return out


def tuning_lines(rr: dict) -> list[str]:
    """How the blend weight was chosen (``eval.rerank_tune_weights``), never on the users it reranks."""
    t = rr.get("tuning")
    if not t:
        return []
    metric = t["metric"]
    if t.get("on") == "crossfit":
        said = "; ".join(
            f"fold {n + 1} ({f['users']} users) got β = {f['chosen']:g}, chosen on the other "
            f"{f['chosen_on_users']} users' {metric} (first stage {f['other_before']:.4f}; "
            + ", ".join(f"β={w} {v:.4f}" for w, v in f["other_ndcg"].items())
            + ")"
            for n, f in enumerate(t["folds"])
        )
        head = f"Blend weight by cross-fitting over users: {said}."
    else:
        tried = ", ".join(f"β={w} {v:.4f}" for w, v in t["valid_ndcg"].items())
        head = (
            f"Blend weight β = {t['chosen']:g}, chosen on {t['users']} validation users' {metric} "
            f"(first stage {t['valid_before']:.4f}; {tried})."
        )
    shown = ", ".join(f"β={w} {v:.4f}" for w, v in t.get("scored_ndcg", {}).items())
    return [
        head + f" Every β on all the reranked users, shown and not used to choose: {shown}.",
        "",
    ]


def numbers(prefix: str, values: dict) -> dict[str, float]:
    """``<prefix>/<key>`` for the numeric values of ``values`` (booleans and text left out)."""
    return {
        f"{prefix}/{k}": float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def flat_metrics(metrics: dict) -> dict[str, float]:
    """``rating/<model>/<key>``, ``paired/student_expected_vs_<model>/<key>`` and ``rerank/<key>`` numbers,
    the names a W&B sweep or dashboard uses."""
    out = {}
    for model, r in metrics["rating"].items():
        out.update(numbers(f"rating/{model}", r))
    for pair, r in (metrics.get("paired") or {}).items():
        out.update(numbers(f"paired/{pair}", r))
    out.update(numbers("rerank", metrics.get("rerank") or {}))
    out.update(numbers("rerank/tuning", (metrics.get("rerank") or {}).get("tuning") or {}))
    out.update(numbers("reasoning", metrics.get("reasoning") or {}))
    gen = metrics.get("generation") or {}
    out.update(numbers("generation", {k: gen[k] for k in ("max_new_tokens", "cut", "cut_rate") if k in gen}))
    return out


def log_to_wandb(
    tcfg, metrics: dict, preds: list[Prediction], out_dir: Path, rows: int, run_id: str | None = None
) -> str:
    """The metrics and a table of explanations in W&B: a run of its own (job_type=evaluate, grouped with
    the training run), or, given ``run_id``, appended to the training run (the pipeline does this, so a
    sweep's run holds both the training curves and the test metrics). Offline unless the training
    config asked for online. Secrets never reach it."""
    import wandb  # optional and heavy: only a run that logs to W&B loads it

    run = wandb.init(
        project=tcfg.logger.project,
        entity=tcfg.logger.entity,
        dir=str(out_dir),
        job_type="evaluate",
        group=tcfg.logger.group or tcfg.get("experiment_name") or "default",
        mode="offline" if tcfg.logger.mode == "offline" else "online",
        config=scrub_secrets({"train": to_container(tcfg), "protocol": metrics["protocol"]}),
        tags=[f"dataset:{tcfg.dataset.name}", f"student:{tcfg.student.name}"],
        reinit="finish_previous",
        **({"id": run_id, "resume": "allow"} if run_id else {}),
    )
    try:
        table = wandb.Table(columns=["user_id", "item_id", "truth", "expected", "most_likely", "reasoning"])
        for p in preds[:rows]:
            table.add_data(p.user_id, p.item_id, p.truth, p.rating_expected, p.rating_argmax, p.reasoning)
        run.log({"explanations": table, **flat_metrics(metrics)})
        return str(out_dir / "wandb")
    finally:
        run.finish()
