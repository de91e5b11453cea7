"""Every evaluation metric of the project, one function each, the definition above the code.

Rating metrics take two equal-length arrays of true and predicted ratings (on the dataset's own
scale, after any tokenisation remapping has been inverted).

Top-k metrics use **binary relevance**: an item is relevant to a user when it is in that user's
relevant set (e.g. the user's test items, or those rated at least a threshold — the caller decides
and should log which). Notation for one user:

* ``L`` — the ranked list the system returned (best first, no duplicates), ``L[:k]`` its top k;
* ``R`` — the user's relevant items, ``|R| >= 1``;
* ``rel_i`` — 1 if the item at 1-based position ``i`` of ``L`` is in ``R``, else 0;
* ``hits@k = sum_{i<=k} rel_i``.

A list shorter than ``k`` is scored as if padded with non-relevant items. Users whose relevant set
is empty have no defined Recall/nDCG; :func:`topk_metrics` excludes them and reports how many.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np

# --------------------------------------------------------------------------------------------------
# Rating metrics


def _check_pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same shape (got {t.shape} and {p.shape})")
    if t.size == 0:
        raise ValueError("cannot compute a rating metric on zero predictions")
    if np.isnan(t).any() or np.isnan(p).any():
        raise ValueError(
            f"rating metrics got NaN ({int(np.isnan(t).sum())} in y_true, {int(np.isnan(p).sum())} in "
            "y_pred); "
            "count parse failures and apply a fallback before scoring"
        )
    return t, p


def rmse(y_true, y_pred) -> float:
    """Root mean squared error: ``sqrt( (1/N) * sum_j (y_j - yhat_j)^2 )``."""
    t, p = _check_pair(y_true, y_pred)
    return float(np.sqrt(np.mean((t - p) ** 2)))


def mae(y_true, y_pred) -> float:
    """Mean absolute error: ``(1/N) * sum_j |y_j - yhat_j|``. Always ``MAE <= RMSE``."""
    t, p = _check_pair(y_true, y_pred)
    return float(np.mean(np.abs(t - p)))


# --------------------------------------------------------------------------------------------------
# Per-user top-k metrics


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"cut-off k must be a positive integer (got {k})")


def _gains(ranked: Sequence, relevant: set, k: int) -> list[int]:
    """``rel_i`` for ``i = 1..min(k, len(ranked))``."""
    _check_k(k)
    if not relevant:
        raise ValueError("top-k metrics are undefined for a user with no relevant items")
    return [1 if item in relevant else 0 for item in list(ranked)[:k]]


def hit_at_k(ranked: Sequence, relevant: set, k: int) -> float:
    """Hit@k (hit ratio): ``1 if hits@k >= 1 else 0``."""
    return 1.0 if any(_gains(ranked, relevant, k)) else 0.0


def precision_at_k(ranked: Sequence, relevant: set, k: int) -> float:
    """Precision@k: ``hits@k / k`` (divides by k even when the list is shorter than k)."""
    return sum(_gains(ranked, relevant, k)) / k


def recall_at_k(ranked: Sequence, relevant: set, k: int) -> float:
    """Recall@k: ``hits@k / |R|``.

    Convention: the denominator is the full ``|R|``, not ``min(k, |R|)``, so a user with more
    relevant items than ``k`` cannot reach 1 (RecBole's convention; some papers cap it at k).
    """
    return sum(_gains(ranked, relevant, k)) / len(relevant)


def mrr_at_k(ranked: Sequence, relevant: set, k: int) -> float:
    """MRR@k (reciprocal rank): ``1 / i*`` where ``i*`` is the 1-based position of the first relevant
    item within the top k, or 0 when there is none."""
    for i, g in enumerate(_gains(ranked, relevant, k), start=1):
        if g:
            return 1.0 / i
    return 0.0


def dcg_at_k(ranked: Sequence, relevant: set, k: int) -> float:
    """DCG@k with binary gains: ``sum_{i<=k} rel_i / log2(i + 1)``."""
    return sum(g / math.log2(i + 1) for i, g in enumerate(_gains(ranked, relevant, k), start=1))


def ndcg_at_k(ranked: Sequence, relevant: set, k: int) -> float:
    """nDCG@k: ``DCG@k / IDCG@k`` with ``IDCG@k = sum_{i<=min(k, |R|)} 1 / log2(i + 1)`` — the DCG of
    a list that puts all relevant items first."""
    dcg = dcg_at_k(ranked, relevant, k)
    idcg = sum(1.0 / math.log2(i + 1) for i in range(1, min(k, len(relevant)) + 1))
    return dcg / idcg


PER_USER = {
    "ndcg": ndcg_at_k,
    "recall": recall_at_k,
    "hit": hit_at_k,
    "mrr": mrr_at_k,
    "precision": precision_at_k,
}


# --------------------------------------------------------------------------------------------------
# Aggregate


def topk_metrics(
    ranked: Mapping[Hashable, Sequence],
    relevant: Mapping[Hashable, Iterable],
    ks: Iterable[int],
    metrics: Iterable[str] = ("ndcg", "recall", "hit", "mrr", "precision"),
) -> dict[str, float]:
    """Mean of each per-user metric over the evaluated users, for each cut-off in ``ks``.

    Evaluated users: every user in ``relevant`` whose relevant set is non-empty. A user with relevant
    items but no entry in ``ranked`` gets an empty list (all metrics 0), so a retriever cannot look
    better by skipping users. Users of ``ranked`` absent from ``relevant`` are ignored.

    Returns keys ``<metric>@<k>`` (e.g. ``ndcg@10``), ``users_evaluated`` and
    ``users_without_relevant`` (users in ``relevant`` with an empty set, excluded). Raises on
    duplicate items in one ranked list (duplicates would inflate hits).
    """
    ks = sorted({int(k) for k in ks})
    if not ks:
        raise ValueError("topk_metrics needs at least one cut-off k")
    for k in ks:
        _check_k(k)
    names = list(metrics)
    unknown = [m for m in names if m not in PER_USER]
    if unknown:
        raise ValueError(f"unknown top-k metric(s) {unknown}; allowed: {sorted(PER_USER)}")

    sums = {f"{m}@{k}": 0.0 for m in names for k in ks}
    evaluated = skipped = 0
    for user, rel in relevant.items():
        rel = set(rel)
        if not rel:
            skipped += 1
            continue
        lst = list(ranked.get(user, ()))
        if len(set(lst)) != len(lst):
            raise ValueError(f"ranked list of user {user!r} contains duplicate items")
        evaluated += 1
        for m in names:
            fn = PER_USER[m]
            for k in ks:
                sums[f"{m}@{k}"] += fn(lst, rel, k)
    out = {key: (v / evaluated if evaluated else float("nan")) for key, v in sums.items()}
    out["users_evaluated"] = evaluated
    out["users_without_relevant"] = skipped
    return out


# --------------------------------------------------------------------------------------------------
# Paired uncertainty: is a difference between two models on the same pairs (or users) more than chance?
#
# Two models scored on the same N test pairs share the pairs' difficulty, so their difference is far
# less noisy than either figure alone. The paired bootstrap draws N pairs with replacement, the same
# draw for both models, ``resamples`` times, and recomputes the difference each time; the interval is
# the central ``level`` share of those differences (percentile bootstrap) and ``share_a_better`` the
# share of draws in which model ``a`` scored better. A fixed ``seed`` makes the figures reproducible.

BOOTSTRAP_RESAMPLES = 2000


def _draws(n: int, resamples: int, seed: int) -> np.ndarray:
    if n < 2:
        raise ValueError(f"a paired bootstrap needs at least 2 pairs (got {n})")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1 (got {resamples})")
    return np.random.default_rng(seed).integers(0, n, size=(int(resamples), n))


def _interval(diffs: np.ndarray, level: float) -> tuple[float, float]:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1) (got {level})")
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(diffs, [tail, 1.0 - tail])
    return float(lo), float(hi)


def paired_rmse(
    y_true,
    pred_a,
    pred_b,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """``rmse_diff = RMSE(a) − RMSE(b)`` on the same pairs (negative: ``a`` is better), its paired
    bootstrap interval ``ci_low``/``ci_high`` and ``share_a_better``, the share of draws with
    ``RMSE(a) < RMSE(b)``; ``n``, ``rmse_a``, ``rmse_b`` and ``level`` beside them."""
    t, a = _check_pair(y_true, pred_a)
    _, b = _check_pair(y_true, pred_b)
    ea, eb = (t - a) ** 2, (t - b) ** 2
    idx = _draws(len(t), resamples, seed)
    diffs = np.sqrt(ea[idx].mean(axis=1)) - np.sqrt(eb[idx].mean(axis=1))
    lo, hi = _interval(diffs, level)
    ra, rb = float(np.sqrt(ea.mean())), float(np.sqrt(eb.mean()))
    return {
        "n": int(len(t)),
        "rmse_a": ra,
        "rmse_b": rb,
        "rmse_diff": ra - rb,
        "ci_low": lo,
        "ci_high": hi,
        "share_a_better": float(np.mean(diffs < 0)),
        "level": float(level),
    }


def paired_gain(
    after,
    before,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """``gain = mean(after − before)`` of a per-unit score (e.g. each user's nDCG@10 after and before
    reranking), its paired bootstrap interval ``ci_low``/``ci_high`` and ``share_better``, the share
    of draws with a positive gain; ``n`` and ``level`` beside them."""
    a, b = np.asarray(after, dtype=float), np.asarray(before, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_gain: after and before must be equal-length 1-d ({a.shape} vs {b.shape})")
    d = a - b
    diffs = d[_draws(len(d), resamples, seed)].mean(axis=1)
    lo, hi = _interval(diffs, level)
    return {
        "n": int(len(d)),
        "gain": float(d.mean()),
        "ci_low": lo,
        "ci_high": hi,
        "share_better": float(np.mean(diffs > 0)),
        "level": float(level),
    }


def per_user(
    ranked: Mapping[Hashable, Sequence], relevant: Mapping[Hashable, Iterable], metric: str, k: int
) -> dict[Hashable, float]:
    """One top-k ``metric`` per evaluated user (relevant set non-empty; a user missing from ``ranked``
    scores 0), the values :func:`topk_metrics` averages."""
    _check_k(k)
    if metric not in PER_USER:
        raise ValueError(f"unknown top-k metric {metric!r}; allowed: {sorted(PER_USER)}")
    fn = PER_USER[metric]
    return {u: fn(list(ranked.get(u, ())), set(rel), k) for u, rel in relevant.items() if set(rel)}
