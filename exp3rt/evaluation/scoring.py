"""Turning predictions into error figures: the failure policies' fallback values (:func:`fallback_models`,
:func:`apply_fallback`), the student's error table per readout (:func:`error_table`), the rating
baselines' errors on the same pairs (:func:`baseline_errors`) and the student against each of them with a
paired bootstrap interval (:func:`paired_errors`).

A failed readout is never scored as zero error: the failure policy either fills it with the prediction
of the baseline of the same name, fitted on the training split, or excludes the pair; either way the
failures are counted. (Named ``scoring`` rather than ``errors``: :mod:`exp3rt.errors` is the user-facing
exception module.)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from exp3rt.baselines.runner import rating_errors
from exp3rt.config import FailurePolicy, RatingBaselinesConf
from exp3rt.inference.prediction import Prediction
from exp3rt.metrics import mae, paired_rmse, rmse

POLICIES = tuple(p.value for p in FailurePolicy)


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


def readout_values(preds: list[Prediction], which: str, policy: str, models: dict) -> dict:
    """The ratings one readout (``argmax`` | ``expected`` | ``direct_*``) scores, failures filled or left
    out by the failure ``policy`` (``models``: :func:`fallback_models`): ``index`` (positions in
    ``preds`` that are scored), ``truth``, ``pred``, ``warm`` and the number of ``failures``."""
    policy = FailurePolicy(policy)  # a value the schema checked; a caller's typo is a ValueError naming it
    missing = [p for p in preds if getattr(p, f"rating_{which}") is None]
    filled = {}  # (user, item) -> the policy's baseline prediction, one predict call for every failure
    if missing and policy != "exclude":
        values = models[policy].predict([p.user_id for p in missing], [p.item_id for p in missing])
        filled = {(p.user_id, p.item_id): float(v) for p, v in zip(missing, values, strict=True)}
    index, truth, pred, warm, failures = [], [], [], [], 0
    for i, p in enumerate(preds):
        value, fell_back = getattr(p, f"rating_{which}"), False
        if value is None:
            value, fell_back = filled.get((p.user_id, p.item_id)), True
        failures += int(fell_back)
        if value is None:
            continue
        index.append(i)
        truth.append(p.truth)
        pred.append(value)
        warm.append(p.warm)
    return {
        "index": np.array(index, dtype=int),
        "truth": np.array(truth, dtype=float),
        "pred": np.array(pred, dtype=float),
        "warm": np.array(warm, dtype=bool),
        "failures": failures,
    }


def error_table(preds: list[Prediction], which: str, policy: str, models: dict) -> dict:
    """RMSE/MAE of one readout (``argmax`` | ``expected`` | ``direct_*``) overall, warm and cold, with the
    number of failures and how they were handled (``models``: :func:`fallback_models`)."""
    v = readout_values(preds, which, policy, models)
    truth_a, pred_a, warm_a, failures = v["truth"], v["pred"], v["warm"], v["failures"]
    out = {
        "n": len(preds),
        "scored": int(len(truth_a)),
        "failures": failures,
        "failure_policy": FailurePolicy(policy),
        "parse_rate": 1.0 - failures / max(1, len(preds)),
    }
    out["rmse"] = rmse(truth_a, pred_a) if len(truth_a) else None
    out["mae"] = mae(truth_a, pred_a) if len(truth_a) else None
    for tag, mask in (("warm", warm_a), ("cold", ~warm_a)):
        out[f"rmse_{tag}"] = rmse(truth_a[mask], pred_a[mask]) if mask.any() else None
        out[f"mae_{tag}"] = mae(truth_a[mask], pred_a[mask]) if mask.any() else None
    return out


def paired_errors(
    preds: list[Prediction], policy: str, models: dict, others: dict, baseline_preds: dict
) -> dict:
    """The method's readout (``student_expected``) against every other model on the same pairs:
    ``student_expected_vs_<model>`` → :func:`exp3rt.metrics.paired_rmse` (``rmse_diff`` < 0: the student
    is better; a paired bootstrap interval over the pairs). ``others``: the student's other readouts by
    row name (``{"student_direct_expected": "direct_expected"}``), on the pairs both readouts scored;
    ``baseline_preds``: each baseline's predictions of every pair of ``preds``, in order."""
    mine = readout_values(preds, "expected", policy, models)
    out = {}
    if len(mine["index"]) < 2:
        return out
    for name, which in others.items():
        theirs = readout_values(preds, which, policy, models)
        both = np.intersect1d(mine["index"], theirs["index"])
        if len(both) < 2:
            continue
        at, there = np.searchsorted(mine["index"], both), np.searchsorted(theirs["index"], both)
        out[f"student_expected_vs_{name}"] = paired_rmse(
            mine["truth"][at], mine["pred"][at], theirs["pred"][there]
        )
    for name, values in baseline_preds.items():
        b = np.asarray(values, dtype=float)[mine["index"]]
        out[f"student_expected_vs_{name}"] = paired_rmse(mine["truth"], mine["pred"], b)
    return out


def pairs_frame(preds: list[Prediction]) -> pd.DataFrame:
    """The scored pairs as :func:`baseline_errors` reads them (``user_id``, ``item_id``, ``rating``,
    ``warm``)."""
    return pd.DataFrame(
        {
            "user_id": [p.user_id for p in preds],
            "item_id": [p.item_id for p in preds],
            "rating": [p.truth for p in preds],
            "warm": [p.warm for p in preds],
        }
    )


def baseline_errors(
    train: pd.DataFrame, pairs: pd.DataFrame, scale, cfg_rating, predictions: dict | None = None
) -> dict:
    """The errors of every configured rating baseline (``baselines.rating``), fitted on ``train``, on the
    student's scored ``pairs`` (``user_id``, ``item_id``, ``rating``, ``warm``); ``predictions``, when
    given, receives each baseline's predictions of ``pairs`` in order (for :func:`paired_errors`)."""
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
        if predictions is not None:
            predictions[name] = pred
    return out


def default_rating_cfg():
    """The default ``baselines.rating`` settings, for a train config saved without them."""
    return OmegaConf.structured(RatingBaselinesConf)
