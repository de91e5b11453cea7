"""Fit and evaluate every configured baseline on one split; used by ``exp3rt-baselines`` and later by
the pipeline. Returns a JSON-ready dict; writing files is the caller's business except candidates."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from exp3rt.artifacts import save_config, write_json_atomic, write_text_atomic
from exp3rt.baselines.report import baselines_report
from exp3rt.config import SplitStrategy
from exp3rt.data.schema import RatingScale
from exp3rt.data.splits import Split
from exp3rt.metrics import mae, rmse

log = logging.getLogger(__name__)


def rating_errors(truth: np.ndarray, pred: np.ndarray, warm: np.ndarray) -> dict:
    """RMSE/MAE overall and for warm / cold test users (``None`` where a group is empty)."""
    out: dict = {"n": int(len(truth)), "n_warm": int(warm.sum()), "n_cold": int((~warm).sum())}
    out["rmse"], out["mae"] = rmse(truth, pred), mae(truth, pred)
    for tag, mask in (("warm", warm), ("cold", ~warm)):
        out[f"rmse_{tag}"] = rmse(truth[mask], pred[mask]) if mask.any() else None
        out[f"mae_{tag}"] = mae(truth[mask], pred[mask]) if mask.any() else None
    return out


def run_baselines(split: Split, cfg, eval_cfg, scale: RatingScale, out_dir: Path | None = None) -> dict:
    # heavy: torch (the baselines' models)
    from exp3rt.baselines.rating import build_rating_baselines
    from exp3rt.baselines.retrievers import (
        build_retrievers,
        evaluate_retriever,
        relevant_sets,
        write_candidates,
        write_relevant,
    )

    train, test = split.train, split.test
    truth = test["rating"].to_numpy(dtype=float)
    warm = test["warm"].to_numpy(dtype=bool)
    results: dict = {"rating": {}, "retrieval": {}, "timings_s": {}}

    rating_models = build_rating_baselines(cfg.rating, scale)
    values = np.unique(np.concatenate([train["rating"].to_numpy(dtype=float), truth]))
    if len(values) <= 1 and rating_models:  # e.g. a LightGCN folder: every interaction is rating 1
        results["rating_skipped"] = (
            f"every training and test rating is {values[0]:g} (implicit feedback): nothing to predict"
            if len(values)
            else "no ratings"
        )
        log.info("rating baselines skipped: %s", results["rating_skipped"])
        rating_models = {}
    for name, model in rating_models.items():
        t0 = time.perf_counter()
        model.fit(train)
        pred = np.asarray(model.predict(test["user_id"].to_numpy(), test["item_id"].to_numpy()), dtype=float)
        results["rating"][name] = rating_errors(truth, pred, warm)
        results["timings_s"][f"rating/{name}"] = round(time.perf_counter() - t0, 3)
        log.info("rating baseline %s: RMSE %.4f", name, results["rating"][name]["rmse"])

    threshold = cfg.retrieval.positive_threshold
    relevant = relevant_sets(test, threshold)
    users = sorted(relevant)  # every test user gets candidates; those with no positives are not scored
    ks = sorted({*eval_cfg.ks, int(cfg.retrieval.num_candidates)})
    for name, retriever in build_retrievers(cfg.retrieval).items():
        t0 = time.perf_counter()
        retriever.fit(train)  # the retriever excludes each user's training items itself
        n = max(int(cfg.retrieval.num_candidates), max(eval_cfg.ks))
        recs = retriever.recommend(users, n, with_scores=True)
        results["retrieval"][name] = evaluate_retriever(recs, test, ks, threshold)
        results["timings_s"][f"retrieval/{name}"] = round(time.perf_counter() - t0, 3)
        if out_dir is not None:
            trimmed = {u: items[: int(cfg.retrieval.num_candidates)] for u, items in recs.items()}
            write_candidates(trimmed, Path(out_dir) / "candidates" / f"{name}.parquet")
    if out_dir is not None and results["retrieval"]:
        write_relevant(
            relevant, Path(out_dir) / "candidates", split, threshold, int(cfg.retrieval.num_candidates)
        )
    results["protocol"] = {
        "rating": f"RMSE/MAE over {len(test)} test pairs; predictions clipped to [{scale.min}, {scale.max}]; "
        "warm = test user has >= split.warm_min_train training ratings",
        "topk": {
            "candidates": eval_cfg.candidates,
            "exclude_train_items": True,
            "relevant": "test items" + ("" if threshold is None else f" rated >= {threshold}"),
            "ks": list(eval_cfg.ks),
            "num_candidates": int(cfg.retrieval.num_candidates),
            "users": int(sum(1 for s in relevant.values() if s)),
        },
    }
    return results


def baselines_stage(prepared, split: Split, cfg, eval_cfg, out_dir: Path, config=None) -> dict:
    """The baselines stage over its artifact handles (prepared data, split) and its config slice
    (``baselines``, ``eval`` for the cut-offs): fit, score, write ``candidates/``, ``report.md`` and
    ``metrics.json`` (last: the finished marker) into ``out_dir``, and return the metrics. ``config``: the
    resolved config saved beside them for provenance. exp3rt-baselines and the pipeline both call it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if config is not None:
        save_config(config, out_dir / "config.yaml")
    results = run_baselines(split, cfg, eval_cfg, prepared.dataset.scale, out_dir=out_dir)
    split_cfg = split.meta["config"]  # the split's own resolved config (meta.json), never its folder name
    metrics = {
        "task": "baselines",
        "dataset": prepared.dataset.summary(),
        "data_dir": str(prepared.directory),
        "data_report": {k: prepared.report.get(k) for k in ("skipped_total", "skipped", "notes")},
        "split": {
            "strategy": SplitStrategy(split_cfg["strategy"]).value,
            "seed": int(split_cfg["seed"]),
            "dir": str(split.directory),
            "stats": split.meta["stats"],
        },
        **results,
    }
    write_text_atomic(out_dir / "report.md", "# exp3rt baselines\n\n" + baselines_report(metrics) + "\n")
    write_json_atomic(
        out_dir / "metrics.json", metrics, default=None
    )  # last: the pipeline's "finished" marker
    return metrics
