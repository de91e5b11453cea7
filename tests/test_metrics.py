"""Metrics on hand-computed cases (arithmetic in the comments) and a few hypothesis properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exp3rt.metrics import (
    dcg_at_k,
    hit_at_k,
    mae,
    mrr_at_k,
    ndcg_at_k,
    paired_gain,
    paired_rmse,
    per_user,
    precision_at_k,
    recall_at_k,
    rmse,
    topk_metrics,
)

L2_3 = math.log2(3)  # 1.58496...
L2_5 = math.log2(5)  # 2.32193...

# ---------------------------------------------------------------------------------------------- rating


def test_rmse_mae_hand_computed():
    # errors: 4-3=1, 2-4=-2, 5-5=0, 1-3=-2
    # MAE  = (1 + 2 + 0 + 2) / 4 = 1.25
    # RMSE = sqrt((1 + 4 + 0 + 4) / 4) = sqrt(2.25) = 1.5
    y = [4, 2, 5, 1]
    p = [3, 4, 5, 3]
    assert mae(y, p) == pytest.approx(1.25)
    assert rmse(y, p) == pytest.approx(1.5)


def test_rating_metrics_perfect_is_zero():
    assert rmse([1.0, 2.5], [1.0, 2.5]) == 0.0
    assert mae(np.array([3.0]), np.array([3.0])) == 0.0


@pytest.mark.parametrize("fn", [rmse, mae])
def test_rating_metrics_reject_bad_input(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        fn([1, 2], [1, float("nan")])
    with pytest.raises(ValueError, match="zero predictions"):
        fn([], [])


# ---------------------------------------------------------------------------------------------- top-k

# ranked a b c d e ; relevant {b, d, x}  (x is never retrieved)
# rel_i (i = 1..5):  0 1 0 1 0
RANKED = ["a", "b", "c", "d", "e"]
REL = {"b", "d", "x"}


def test_hit_hand_computed():
    assert hit_at_k(RANKED, REL, 1) == 0.0  # top-1 = [a]: no hit
    assert hit_at_k(RANKED, REL, 2) == 1.0  # b at rank 2


def test_precision_hand_computed():
    assert precision_at_k(RANKED, REL, 5) == pytest.approx(2 / 5)  # hits b, d
    assert precision_at_k(RANKED, REL, 3) == pytest.approx(1 / 3)  # hit b
    # a list shorter than k still divides by k: 2 hits / 10
    assert precision_at_k(RANKED, REL, 10) == pytest.approx(0.2)


def test_recall_hand_computed():
    assert recall_at_k(RANKED, REL, 5) == pytest.approx(2 / 3)  # 2 hits / |R|=3
    assert recall_at_k(RANKED, REL, 3) == pytest.approx(1 / 3)
    assert recall_at_k(RANKED, REL, 1) == 0.0
    # |R| > k: denominator stays |R| (documented convention), so 1 hit of 3 at k=1 -> 1/3, not 1
    assert recall_at_k(["b"], REL, 1) == pytest.approx(1 / 3)


def test_mrr_hand_computed():
    assert mrr_at_k(RANKED, REL, 5) == pytest.approx(0.5)  # first hit at rank 2
    assert mrr_at_k(RANKED, REL, 1) == 0.0
    assert mrr_at_k(["c", "e", "a", "d"], REL, 4) == pytest.approx(0.25)  # first hit at rank 4


def test_ndcg_hand_computed():
    # DCG@5 = 1/log2(3) + 1/log2(5) = 0.630930 + 0.430677 = 1.061606
    # IDCG@5 over min(5, 3) = 3 positions = 1 + 1/log2(3) + 1/log2(4) = 1 + 0.630930 + 0.5 = 2.130930
    # nDCG@5 = 1.061606 / 2.130930 = 0.498189
    assert dcg_at_k(RANKED, REL, 5) == pytest.approx(1 / L2_3 + 1 / L2_5)
    assert ndcg_at_k(RANKED, REL, 5) == pytest.approx(0.498189, abs=1e-6)
    # k=2: DCG = 1/log2(3) = 0.630930; IDCG = 1 + 0.630930 -> 0.386853
    assert ndcg_at_k(RANKED, REL, 2) == pytest.approx(0.386853, abs=1e-6)
    # one relevant item at rank 1 is perfect; at rank 3 it is 1/log2(4) = 0.5
    assert ndcg_at_k(["x", "y"], {"x"}, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["y", "z", "x"], {"x"}, 3) == pytest.approx(0.5)


def test_per_user_rejects_empty_relevant_and_bad_k():
    with pytest.raises(ValueError, match="no relevant"):
        ndcg_at_k(["a"], set(), 1)
    with pytest.raises(ValueError, match="positive"):
        recall_at_k(["a"], {"a"}, 0)


def test_topk_metrics_aggregate_hand_computed():
    ranked = {
        "u1": RANKED,  # values above
        "u2": ["b", "a"],  # relevant {a}: hit at rank 2
        "u3": ["a"],  # relevant set empty -> excluded, counted
        "u5": ["a"],  # not in relevant -> ignored
    }
    relevant = {"u1": REL, "u2": {"a"}, "u3": set(), "u4": {"z"}}  # u4 has no ranking -> all zeros
    m = topk_metrics(ranked, relevant, ks=[2, 5])
    assert m["users_evaluated"] == 3
    assert m["users_without_relevant"] == 1
    # hit@2: u1 1 (b at 2), u2 1, u4 0 -> 2/3
    assert m["hit@2"] == pytest.approx(2 / 3)
    # recall@5: u1 2/3, u2 1, u4 0 -> (2/3 + 1) / 3 = 5/9
    assert m["recall@5"] == pytest.approx(5 / 9)
    # mrr@5: u1 1/2, u2 1/2, u4 0 -> 1/3
    assert m["mrr@5"] == pytest.approx(1 / 3)
    # ndcg@2: u1 0.386853, u2 (1/log2(3)) / 1 = 0.630930, u4 0 -> 1.017783 / 3 = 0.339261
    assert m["ndcg@2"] == pytest.approx(0.339261, abs=1e-6)
    # precision@2: u1 1/2, u2 1/2, u4 0 -> 1/3
    assert m["precision@2"] == pytest.approx(1 / 3)
    assert set(m) == {f"{n}@{k}" for n in ("ndcg", "recall", "hit", "mrr", "precision") for k in (2, 5)} | {
        "users_evaluated",
        "users_without_relevant",
    }


def test_topk_metrics_rejects_duplicates_and_unknown_metric():
    with pytest.raises(ValueError, match="duplicate"):
        topk_metrics({"u": ["a", "a"]}, {"u": {"a"}}, [2])
    with pytest.raises(ValueError, match="unknown"):
        topk_metrics({"u": ["a"]}, {"u": {"a"}}, [1], metrics=["auc"])


def test_topk_metrics_no_users_gives_nan():
    m = topk_metrics({}, {"u": set()}, [1])
    assert m["users_evaluated"] == 0 and math.isnan(m["ndcg@1"])


# ---------------------------------------------------------------------------------------------- properties

items = st.lists(st.integers(0, 30), min_size=0, max_size=25, unique=True)


@settings(max_examples=200, deadline=None)
@given(ranked=items, relevant=st.sets(st.integers(0, 30), min_size=1, max_size=15), k=st.integers(1, 30))
def test_topk_bounds(ranked, relevant, k):
    vals = [f(ranked, relevant, k) for f in (ndcg_at_k, recall_at_k, hit_at_k, mrr_at_k, precision_at_k)]
    assert all(0.0 <= v <= 1.0 + 1e-12 for v in vals)
    # a hit implies positive ndcg/mrr/recall, and no hit implies all zero
    assert (vals[2] > 0) == (vals[0] > 0) == (vals[1] > 0) == (vals[3] > 0)


@settings(max_examples=100, deadline=None)
@given(relevant=st.sets(st.integers(0, 50), min_size=1, max_size=20), extra=items, k=st.integers(1, 30))
def test_perfect_ranking_scores_one(relevant, extra, k):
    ranked = sorted(relevant) + [x for x in extra if x not in relevant]
    assert ndcg_at_k(ranked, relevant, k) == pytest.approx(1.0)
    assert hit_at_k(ranked, relevant, k) == 1.0
    assert mrr_at_k(ranked, relevant, k) == 1.0
    if k >= len(relevant):
        assert recall_at_k(ranked, relevant, k) == pytest.approx(1.0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-10, 10), st.floats(-10, 10)), min_size=1, max_size=40),
)
def test_rmse_at_least_mae(pairs):
    y, p = zip(*pairs, strict=True)
    assert rmse(y, p) >= mae(y, p) - 1e-12


# ---------------------------------------------------------------------------------------------- paired


def test_paired_rmse_of_a_model_better_on_every_pair_is_certain():
    rng = np.random.default_rng(1)
    truth = rng.integers(1, 6, size=50).astype(float)
    b = truth + rng.choice([-1.0, 1.0], size=50)  # off by one everywhere: RMSE 1
    a = truth + 0.5 * np.sign(b - truth)  # half as far, on the same side: RMSE 0.5
    r = paired_rmse(truth, a, b, resamples=500)
    assert r["n"] == 50 and r["level"] == 0.95
    assert math.isclose(r["rmse_a"], 0.5) and math.isclose(r["rmse_b"], 1.0)
    assert math.isclose(r["rmse_diff"], -0.5)
    # every draw has the same two RMSEs: the interval is the point and a always wins
    assert math.isclose(r["ci_low"], -0.5) and math.isclose(r["ci_high"], -0.5)
    assert r["share_a_better"] == 1.0


def test_paired_rmse_interval_holds_the_difference_and_shrinks_with_more_pairs():
    rng = np.random.default_rng(2)

    def draw(n):
        truth = rng.normal(3.0, 1.0, size=n)
        a = truth + rng.normal(0.0, 0.9, size=n)
        b = truth + rng.normal(0.0, 1.0, size=n)
        return paired_rmse(truth, a, b, resamples=1000)

    small, large = draw(40), draw(4000)
    for r in (small, large):
        assert r["ci_low"] <= r["rmse_diff"] <= r["ci_high"]
        assert math.isclose(r["rmse_diff"], r["rmse_a"] - r["rmse_b"])
    assert (large["ci_high"] - large["ci_low"]) < (small["ci_high"] - small["ci_low"]) / 5
    # 4000 pairs tell 0.9 from 1.0 apart; the sign of the true gap is -0.1
    assert large["ci_high"] < 0 and large["share_a_better"] > 0.99


def test_paired_rmse_is_reproducible_and_identical_models_tie():
    truth, a = [1.0, 2.0, 3.0, 4.0, 5.0], [1.5, 2.0, 2.0, 4.5, 4.0]
    assert paired_rmse(truth, a, [3.0] * 5, seed=7) == paired_rmse(truth, a, [3.0] * 5, seed=7)
    same = paired_rmse(truth, a, a)
    assert same["rmse_diff"] == 0.0 and same["ci_low"] == same["ci_high"] == 0.0
    assert same["share_a_better"] == 0.0


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (([1.0], [1.0], [2.0]), {}, "at least 2 pairs"),
        (([1.0, 2.0], [1.0], [2.0, 2.0]), {}, "same shape"),
        (([1.0, 2.0], [1.0, 2.0], [2.0, 2.0]), {"level": 1.0}, "level"),
        (([1.0, 2.0], [1.0, 2.0], [2.0, 2.0]), {"resamples": 0}, "resamples"),
    ],
)
def test_paired_rmse_rejects_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        paired_rmse(*args, **kwargs)


def test_paired_gain_by_hand_and_per_user_matches_topk_metrics():
    g = paired_gain([0.5, 0.7, 0.2], [0.4, 0.6, 0.1])
    assert math.isclose(g["gain"], 0.1) and g["n"] == 3 and g["share_better"] == 1.0
    assert math.isclose(g["ci_low"], 0.1) and math.isclose(g["ci_high"], 0.1)
    mixed = paired_gain([1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0])
    assert mixed["gain"] == 0.0 and mixed["ci_low"] < 0 < mixed["ci_high"]
    with pytest.raises(ValueError, match="equal-length"):
        paired_gain([1.0, 2.0], [1.0])
    ranked = {"a": ["x", "y", "z"], "b": ["p", "q"], "c": ["m"]}
    relevant = {"a": {"z"}, "b": {"p", "q"}, "c": set(), "d": {"w"}}  # c: no relevant; d: not ranked
    scores = per_user(ranked, relevant, "ndcg", 2)
    assert set(scores) == {"a", "b", "d"} and scores["a"] == 0.0 and scores["b"] == 1.0 and scores["d"] == 0.0
    assert math.isclose(sum(scores.values()) / 3, topk_metrics(ranked, relevant, [2], ["ndcg"])["ndcg@2"])
    with pytest.raises(ValueError, match="unknown top-k metric"):
        per_user(ranked, relevant, "auc", 2)
