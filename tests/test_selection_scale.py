"""similar_users neighbour lists at scale: the batched computations (RatingCosine's sparse one, the dense
partial top-k) select exactly what the per-pair dense computation selected before them, ties included,
the leakage guards hold, and no users × users array is ever allocated (issue 18 item 4)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from exp3rt.teacher.selection import (
    _TIE_DECIMALS,
    ItemProfilePlan,
    ProfileEmbedding,
    RatingCosine,
    helpful_order,
    select_reviews,
)


def random_train(n_users: int, n_items: int, n_ratings: int, seed: int) -> pd.DataFrame:
    """Zipf-ish item popularity, ratings 1..5, votes 0..2 and coarse times (many ties everywhere)."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items + 1)
    u = rng.integers(0, n_users, n_ratings)
    i = rng.choice(n_items, size=n_ratings, p=pop / pop.sum())
    keys = np.unique(u * n_items + i)
    u, i = keys // n_items, keys % n_items
    return pd.DataFrame(
        {
            "user_id": [f"u{x}" for x in u],
            "item_id": [f"i{x}" for x in i],
            "rating": rng.integers(1, 6, len(u)).astype(np.float64),
            "helpful_votes": rng.integers(0, 3, len(u)),
            "timestamp": rng.integers(0, 3, len(u)),
        },
        index=rng.permutation(len(u)) + 1000,  # labels that are not positions
    )


def target_pairs(train: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Every training pair, some unseen (user, item) pairs, an unknown user and an unknown item."""
    rng = np.random.default_rng(seed)
    users, items = train["user_id"].unique(), train["item_id"].unique()
    extra = pd.DataFrame({"user_id": rng.choice(users, 300), "item_id": rng.choice(items, 300)})
    odd = pd.DataFrame({"user_id": ["nobody", users[0], "nobody"], "item_id": [items[0], "unseen", "unseen"]})
    return pd.concat([train[["user_id", "item_id"]], extra, odd], ignore_index=True).drop_duplicates()


def reference_rows(train: pd.DataFrame, sim, user: str, item: str, k: int) -> list:
    """The computation before issue 18 item 4, pair by pair: a dense row of rounded similarities over the
    item's reviewers in most-helpful order, own reviews at -inf, a full stable argsort, own ones dropped."""
    pos = np.flatnonzero((train["item_id"] == item).to_numpy())
    pos = pos[helpful_order(train.iloc[pos])]
    cands = train["user_id"].to_numpy(dtype=object)[pos]
    if len(cands) == 0:
        return []
    sims = np.round(sim.similarity_matrix([user], list(cands), exclude_item=item)[0], _TIE_DECIMALS)
    own = cands == user
    sims[own] = -np.inf
    order = np.argsort(-sims, kind="stable")
    return list(train.index[pos[order[~own[order]][:k]]])


def quantised_embedding(train: pd.DataFrame, seed: int) -> ProfileEmbedding:
    """Profile vectors with entries in {0, 1} (normalised): many exactly equal similarities."""
    users = sorted(train["user_id"].unique())
    m = np.random.default_rng(seed).integers(0, 2, (len(users), 6)).astype(np.float64)
    m[:, 0] = 1.0
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    sim = ProfileEmbedding({})
    sim.users, sim.matrix = pd.Index(users, dtype=object), m
    return sim


# (users, items): about 12 ratings a user, most reviewers share an item with the target; about 3.5 a
# user, most similarities are 0 (the sparse path's filled-in zeros)
DENSITIES = {"dense": (150, 60), "sparse": (800, 300)}


@pytest.mark.parametrize("density", sorted(DENSITIES))
@pytest.mark.parametrize("kind", ["rating_cosine", "profile_embedding"])
@pytest.mark.parametrize(("block", "k"), [(4_000_000, 3), (37, 3), (37, 1)])  # 37: many batches, row blocks
def test_plan_equals_the_per_pair_dense_computation(density, kind, block, k):
    train = random_train(*DENSITIES[density], n_ratings=3000, seed=5)
    pairs = target_pairs(train, seed=6)
    sim = RatingCosine().fit(train) if kind == "rating_cosine" else quantised_embedding(train, seed=7)
    sim.neighbour_block_entries = block
    plan = ItemProfilePlan.build(train, pairs, "similar_users", k, 30, sim)
    assert plan.stats["jobs"] == len(pairs)
    jobs = {(r.item_id, r.target_user): r.row_ids for r in plan.jobs.itertuples()}
    for u, i in zip(pairs["user_id"], pairs["item_id"], strict=True):
        assert jobs[(i, u)] == reference_rows(train, sim, u, i, k), (kind, u, i)


@pytest.mark.parametrize(("density", "at_least"), [("dense", 20), ("sparse", 200)])
def test_ties_are_common_in_the_equality_data(density, at_least):
    """The equality test would be weak without ties: count the rows (target × the 10 most-rated items'
    reviewers) that hold two equal rounded similarities."""
    train = random_train(*DENSITIES[density], n_ratings=3000, seed=5)
    sim = RatingCosine().fit(train)
    tied = 0
    for item in train["item_id"].value_counts().index[:10]:
        cands = list(train.loc[train["item_id"] == item, "user_id"])
        for u in cands[:20]:
            s = np.round(sim.similarity(u, cands, exclude_item=item), _TIE_DECIMALS)
            tied += len(s) - len(np.unique(s)) > 0
    assert tied >= at_least  # measured: 30 of 200 dense, 200 of 200 sparse


def test_sparse_and_dense_paths_agree():
    """RatingCosine.neighbours (sparse) and the base class's dense default give the same lists."""
    train = random_train(n_users=120, n_items=40, n_ratings=2000, seed=11)
    pairs = target_pairs(train, seed=12)
    sim = RatingCosine().fit(train)
    groups = []
    for item, g in pairs.groupby("item_id", sort=True):
        pos = np.flatnonzero((train["item_id"] == item).to_numpy())
        pos = pos[helpful_order(train.iloc[pos])]
        groups.append((item, list(g["user_id"]), list(train["user_id"].to_numpy(dtype=object)[pos])))
    sparse = sim.neighbours(groups, 3)
    dense = super(RatingCosine, sim).neighbours(groups, 3)
    assert [[list(x) for x in g] for g in sparse] == [[list(x) for x in g] for g in dense]


def test_leakage_guards_hold_in_the_batched_path():
    train = random_train(n_users=100, n_items=30, n_ratings=1500, seed=3)
    test = pd.DataFrame(
        {"user_id": ["u1", "u2", "u3"], "item_id": ["i0", "i1", "i2"], "rating": [1.0, 5.0, 1.0]}
    )
    test = test[
        ~test.set_index(["user_id", "item_id"]).index.isin(train.set_index(["user_id", "item_id"]).index)
    ]
    sim = RatingCosine().fit(train)  # the test ratings are never seen
    pairs = pd.concat([train[["user_id", "item_id"]], test[["user_id", "item_id"]]], ignore_index=True)
    plan = ItemProfilePlan.build(train, pairs, "similar_users", 3, 30, sim)
    jobs = {(r.item_id, r.target_user): r for r in plan.jobs.itertuples()}
    for (u, i), key in plan.pair_to_job.items():
        job = jobs[key]
        assert u not in [v for v, _ in job.review_keys]  # never the pair's own review (guard 2)
        assert set(job.row_ids) <= set(train.index)  # training rows only (guard 1)
        assert job.n_reviews == min(3, int(((train["item_id"] == i) & (train["user_id"] != u)).sum()))
    # guard 3: a training pair's neighbours are chosen without its own rating; changing that rating
    # changes nothing in its own list
    u, i = train.iloc[0]["user_id"], train.iloc[0]["item_id"]
    flipped = train.copy()
    flipped.loc[flipped.index[0], "rating"] = 6.0 - flipped.iloc[0]["rating"]
    a = select_reviews(train, i, "similar_users", 3, 30, target_user=u, similarity=sim)
    b = select_reviews(
        flipped, i, "similar_users", 3, 30, target_user=u, similarity=RatingCosine().fit(flipped)
    )
    assert list(a.index) == list(b.index)


def test_no_users_by_users_array_is_allocated():
    """About 9,500 users: one users × users float64 array would be 720 MB, and tracemalloc sees numpy's
    allocations, so a peak far below it proves none was made (nor a dense targets × reviewers matrix of
    all pairs). The sparse path's peak is bounded by its block (measured: 45 MB, the plan's job table
    and the frames' string objects included)."""
    train = random_train(n_users=10_000, n_items=2000, n_ratings=30_000, seed=21)
    n_users = train["user_id"].nunique()
    sim = RatingCosine().fit(train)
    pairs = train[["user_id", "item_id"]].iloc[:8000]
    tracemalloc.start()
    try:
        plan = ItemProfilePlan.build(train, pairs, "similar_users", 3, 30, sim)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plan.stats["jobs"] == 8000
    assert n_users * n_users * 8 > 700e6
    assert peak < 100e6, peak


def test_dense_top_k_equals_a_stable_full_sort():
    """The partial top-k against a stable argsort cut at k, own columns (-inf) dropped, k up to beyond
    the row length, on small integer values (ties everywhere)."""
    from exp3rt.teacher.selection import _dense_top_k

    rng = np.random.default_rng(4)
    for n in (1, 2, 5, 40):
        sims = rng.integers(-2, 3, (30, n)).astype(np.float64)
        sims[rng.random((30, n)) < 0.1] = -np.inf
        for k in (1, 3, 50):
            got = _dense_top_k(sims, k)
            for row, cols in zip(sims, got, strict=True):
                order = np.argsort(-row, kind="stable")
                assert list(cols) == [int(j) for j in order if np.isfinite(row[j])][:k]
