"""Rating baselines and first-stage retrievers on small datasets whose answers are known."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch

from exp3rt.baselines.rating import (
    Bias,
    BiasedMF,
    GlobalMean,
    ItemMean,
    UserMean,
    build_rating_baselines,
)
from exp3rt.baselines.retrievers import (
    BPRMF,
    LightGCN,
    Popularity,
    build_retrievers,
    evaluate_retriever,
    normalized_adjacency,
    read_candidates,
    write_candidates,
)
from exp3rt.config import RatingBaselinesConf, RetrieverBaselinesConf
from exp3rt.data.schema import RatingScale
from exp3rt.metrics import rmse

torch.set_num_threads(1)


def frame(rows) -> pd.DataFrame:
    u, i, r = zip(*rows, strict=True)
    return pd.DataFrame({"user_id": list(u), "item_id": list(i), "rating": np.asarray(r, dtype=float)})


# ================================================================================ rating baselines

TINY = frame([("u1", "i1", 5), ("u1", "i2", 3), ("u2", "i1", 1)])  # mu = 9/3 = 3


def test_mean_baselines_exact():
    gm = GlobalMean().fit(TINY)
    assert gm.predict(["u1", "zz"], ["i2", "i9"]).tolist() == [3.0, 3.0]
    um = UserMean().fit(TINY)
    # u1: (5 + 3) / 2 = 4; u2: 1; unseen user -> mu = 3
    assert um.predict(["u1", "u2", "new"], ["i1", "i1", "i1"]).tolist() == [4.0, 1.0, 3.0]
    im = ItemMean().fit(TINY)
    # i1: (5 + 1) / 2 = 3; i2: 3; unseen item -> mu = 3
    assert im.predict(["u1", "u1", "u1"], ["i1", "i2", "new"]).tolist() == [3.0, 3.0, 3.0]


def test_predictions_clipped_to_scale():
    # u1 mean 4, item bias pushes Bias above 5 without clipping: reg=0 gives b_i1 + b_u1 > 2
    df = frame([("u1", "i1", 5), ("u1", "i2", 5), ("u2", "i1", 5), ("u3", "i3", 1), ("u3", "i2", 1)])
    raw = Bias(reg=0.0, iters=30).fit(df).predict(["u1", "u3"], ["i1", "i3"])
    clipped = Bias(RatingScale(1, 5), reg=0.0, iters=30).fit(df).predict(["u1", "u3"], ["i1", "i3"])
    assert clipped.min() >= 1.0 and clipped.max() <= 5.0
    assert np.allclose(clipped, np.clip(raw, 1, 5))


def planted_bias_data(seed=0, nu=30, ni=20):
    rng = np.random.default_rng(seed)
    bu = rng.normal(0, 0.6, nu)
    bi = rng.normal(0, 0.6, ni)
    bu -= bu.mean()
    bi -= bi.mean()
    rows = [(f"u{a:02d}", f"i{b:02d}", 3.0 + bu[a] + bi[b]) for a in range(nu) for b in range(ni)]
    return frame(rows), bu, bi


def test_bias_recovers_planted_biases():
    # full matrix r = 3 + b_u + b_i with zero-mean biases: mu = 3 exactly and, with reg = 0, the
    # alternating least squares fixed point is the planted biases
    df, bu, bi = planted_bias_data()
    m = Bias(reg=0.0, iters=50).fit(df)
    assert m.mu == pytest.approx(3.0)
    assert np.abs(m.bu - bu).max() < 1e-8
    assert np.abs(m.bi - bi).max() < 1e-8
    # unseen user: mu + b_i only
    assert m.predict(["nobody"], ["i03"])[0] == pytest.approx(3.0 + bi[3])
    # regularisation shrinks toward zero
    shrunk = Bias(reg=50.0, iters=50).fit(df)
    assert np.abs(shrunk.bu).sum() < np.abs(m.bu).sum()


def test_bias_loss_monotone_in_iterations():
    df, _, _ = planted_bias_data(seed=1)
    df = df.sample(frac=0.5, random_state=0)  # sparse, so iterations matter

    def loss(m):
        p = m.predict_df(df)
        return ((df.rating - p) ** 2).sum() + m.reg * ((m.bu**2).sum() + (m.bi**2).sum())

    losses = [loss(Bias(reg=2.0, iters=k).fit(df)) for k in (1, 2, 5, 20)]
    assert all(a >= b - 1e-9 for a, b in zip(losses, losses[1:], strict=False))


def planted_low_rank(seed=0, nu=80, ni=60, rank=3):
    rng = np.random.default_rng(seed)
    P = rng.normal(0, 0.7, (nu, rank))
    Q = rng.normal(0, 0.7, (ni, rank))
    R = 3.0 + P @ Q.T
    mask = rng.random((nu, ni)) < 0.5
    rows = [(f"u{a}", f"i{b}", R[a, b]) for a in range(nu) for b in range(ni)]
    df = frame(rows)
    return df[mask.ravel()], df[~mask.ravel()]


def test_biased_mf_beats_bias_on_low_rank_data():
    train, test = planted_low_rank()
    bias = Bias(reg=1.0).fit(train)
    mf = BiasedMF(factors=8, epochs=60, lr=0.02, reg=0.02, batch_size=128, seed=0).fit(train)
    e_bias = rmse(test.rating, bias.predict_df(test))
    e_mf = rmse(test.rating, mf.predict_df(test))
    # measured: bias ~1.2, mf ~0.1 — a low-rank signal that biases cannot express
    assert e_bias > 0.8
    assert e_mf < 0.35 * e_bias


def test_biased_mf_deterministic_and_unseen_fallback():
    train, _ = planted_low_rank(seed=2, nu=20, ni=15)
    a = BiasedMF(factors=4, epochs=5, seed=3).fit(train)
    b = BiasedMF(factors=4, epochs=5, seed=3).fit(train.sample(frac=1.0, random_state=1))  # row order
    c = BiasedMF(factors=4, epochs=5, seed=4).fit(train)
    u, i = train.user_id.to_numpy()[:20], train.item_id.to_numpy()[:20]
    assert np.array_equal(a.predict(u, i), b.predict(u, i))
    assert not np.allclose(a.predict(u, i), c.predict(u, i))
    # unseen user and item: global mean; unseen user only: mu + b_i
    assert a.predict(["new"], ["new"])[0] == pytest.approx(a.mu)
    j = a.items.lookup(["i0"])[0]
    assert a.predict(["new"], ["i0"])[0] == pytest.approx(a.mu + a.bi[j])


@pytest.mark.parametrize("cls", [GlobalMean, UserMean, ItemMean, Bias, BiasedMF])
def test_rating_input_errors(cls):
    with pytest.raises(RuntimeError, match="before fit"):
        cls().predict(["u1"], ["i1"])
    with pytest.raises(ValueError, match="missing"):
        cls().fit(TINY.drop(columns="rating"))
    with pytest.raises(ValueError, match="NaN"):
        cls().fit(frame([("u", "i", float("nan"))]))
    with pytest.raises(ValueError, match="align"):
        cls().fit(TINY).predict(["u1", "u2"], ["i1"])


def test_build_rating_baselines_from_config():
    cfg = RatingBaselinesConf(mf_factors=7, bias_reg=2.5)
    models = build_rating_baselines(cfg, RatingScale(1, 5))
    assert list(models) == ["global_mean", "user_mean", "item_mean", "bias", "biased_mf"]
    assert models["biased_mf"].factors == 7 and models["bias"].reg == 2.5
    assert models["bias"].scale == (1.0, 5.0)
    with pytest.raises(ValueError, match="unknown rating baseline"):
        build_rating_baselines(RatingBaselinesConf(models=["svdpp"]), (1, 5))


def load_ml100k(path: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The RecBole ``ml-100k.inter`` file, seeded random 80/20 split (seed 42)."""
    df = pd.read_csv(path, sep="\t")
    df.columns = [c.split(":")[0] for c in df.columns]
    df = df.astype({"user_id": str, "item_id": str, "rating": float})
    perm = np.random.default_rng(42).permutation(len(df))
    n_test = int(round(0.2 * len(df)))
    return df.iloc[perm[n_test:]], df.iloc[perm[:n_test]]


@pytest.mark.slow
def test_biased_mf_ml100k_rmse():
    path = os.environ.get("EXP3RT_ML100K")
    if not path or not os.path.isfile(path):
        pytest.skip("set EXP3RT_ML100K to the ml-100k.inter file to run")
    train, test = load_ml100k(path)
    cfg = RatingBaselinesConf(models=["bias", "biased_mf"])
    models = build_rating_baselines(cfg, RatingScale(1, 5))
    mf = models["biased_mf"].fit(train)
    e_mf = rmse(test.rating, mf.predict_df(test))
    e_bias = rmse(test.rating, models["bias"].fit(train).predict_df(test))
    assert e_mf <= 0.94  # measured 0.9052 (Surprise SVD reports 0.934)
    assert e_mf < e_bias - 0.01  # bias measured 0.9356


# ================================================================================ retrievers


def planted_clusters(seed=0, n_clusters=5, users_per=25, items_per=12, per_user=10, test_per=3):
    """Users like items of their own cluster only; plus a globally popular item liked by everyone.
    Each user's ``test_per`` held-out items come from their own cluster."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(n_clusters):
        for a in range(users_per):
            u = f"c{c}u{a:02d}"
            chosen = rng.choice(items_per, per_user, replace=False)
            for k, b in enumerate(chosen):
                row = (u, f"c{c}i{b:02d}", 5.0)
                (test if k < test_per else train).append(row)
            train.append((u, "hit_item", 5.0))
    return frame(train), frame(test)


def fitted(cls, train, **kw):
    return cls(seed=0, **kw).fit(train)


@pytest.fixture(scope="module")
def clusters():
    train, test = planted_clusters()
    models = {
        "popularity": fitted(Popularity, train),
        "bpr_mf": fitted(BPRMF, train, dim=16, epochs=40, lr=0.05, reg=1e-3, batch_size=128),
        "lightgcn": fitted(LightGCN, train, dim=16, epochs=40, lr=0.05, reg=1e-4, batch_size=128, layers=2),
    }
    return train, test, models


def test_retrievers_beat_popularity_on_planted_clusters(clusters):
    train, test, models = clusters
    users = sorted(test.user_id.unique())
    scores = {n: evaluate_retriever(m.recommend(users, 10), test, [10]) for n, m in models.items()}
    # each user has 5 unseen items of their cluster, 3 of them test, among 59 unseen items.
    # measured recall@10 (data seeds 0/1): popularity 0.168/0.139, bpr_mf 0.88/0.93, lightgcn 0.997/0.992
    assert scores["popularity"]["users_evaluated"] == 125
    assert scores["popularity"]["recall@10"] < 0.3
    for name in ("bpr_mf", "lightgcn"):
        assert scores[name]["recall@10"] > 0.75, (name, scores[name])
        assert scores[name]["recall@10"] > scores["popularity"]["recall@10"] + 0.3


@pytest.mark.parametrize("name", ["popularity", "bpr_mf", "lightgcn"])
def test_recommend_excludes_training_items_and_respects_n(clusters, name):
    train, _, models = clusters
    m = models[name]
    seen = train.groupby("user_id").item_id.apply(set).to_dict()
    recs = m.recommend(list(seen), 5)
    assert set(recs) == set(seen)
    for u, lst in recs.items():
        assert len(lst) == 5 and len(set(lst)) == 5
        assert not (set(lst) & seen[u])
        assert "hit_item" not in lst  # every user trained on it
    # extra exclusions are honoured on top of the training items
    u = "c0u00"
    first = recs[u][0]
    again = m.recommend([u], 5, exclude={u: {first, "not-an-item"}})[u]
    assert first not in again and again[:4] == recs[u][1:5]
    # n larger than the unseen catalogue returns only the unseen items
    everything = m.recommend([u], 10_000)[u]
    assert len(everything) == m.n_items - len(seen[u])


def test_scores_are_sorted_and_unknown_users_get_popularity(clusters):
    _, _, models = clusters
    m = models["lightgcn"]
    scored = m.recommend(["c1u03"], 8, with_scores=True)["c1u03"]
    s = [x[1] for x in scored]
    assert s == sorted(s, reverse=True)
    pop = models["popularity"].recommend(["stranger"], 8)["stranger"]
    assert m.recommend(["stranger"], 8)["stranger"] == pop
    assert pop[0] == "hit_item"  # nothing to exclude for an unseen user


@pytest.mark.parametrize("cls", [BPRMF, LightGCN])
def test_embedding_retrievers_deterministic_for_a_seed(cls):
    train, test = planted_clusters(seed=1, users_per=8, items_per=10, per_user=6, test_per=2)
    kw = dict(dim=8, epochs=5, lr=0.05, batch_size=32)
    a = cls(seed=5, **kw).fit(train)
    b = cls(seed=5, **kw).fit(train.iloc[::-1])  # row order does not matter either
    c = cls(seed=6, **kw).fit(train)
    users = sorted(test.user_id.unique())
    assert np.array_equal(a.user_emb, b.user_emb) and np.array_equal(a.item_emb, b.item_emb)
    assert a.recommend(users, 5) == b.recommend(users, 5)
    assert not np.allclose(a.user_emb, c.user_emb)
    assert a.loss_history[-1] < a.loss_history[0]


def test_popularity_counts_positives_only_and_breaks_ties_by_id():
    df = frame(
        [
            ("u1", "b", 5),
            ("u2", "b", 4),
            ("u3", "a", 5),
            ("u3", "c", 2),
            ("u1", "c", 1),
            ("u2", "c", 1),
            ("u4", "d", 5),
        ]
    )
    m = Popularity(positive_threshold=4.0).fit(df)
    # positives: b x2, a x1, d x1; c has none. a and d tie -> lower id first
    assert m.popularity.tolist() == [1.0, 2.0, 0.0, 1.0]  # a b c d
    assert m.recommend(["new"], 4)["new"] == ["b", "a", "d", "c"]
    # u4 saw d: excluded even though the threshold applies only to positives
    assert m.recommend(["u4"], 2)["u4"] == ["b", "a"]
    with pytest.raises(ValueError, match="positive_threshold"):
        Popularity(positive_threshold=6.0).fit(df)


def test_normalized_adjacency_hand_computed():
    # edges u0-i0, u0-i1, u1-i0 ; degrees u0 2, u1 1, i0 2, i1 1 ; nodes [u0, u1, i0, i1]
    A = normalized_adjacency(np.array([0, 0, 1]), np.array([0, 1, 0]), 2, 2).to_dense().numpy()
    expected = np.zeros((4, 4))
    expected[0, 2] = expected[2, 0] = 1 / np.sqrt(2 * 2)  # 0.5
    expected[0, 3] = expected[3, 0] = 1 / np.sqrt(2 * 1)
    expected[1, 2] = expected[2, 1] = 1 / np.sqrt(1 * 2)
    assert np.allclose(A, expected)


def test_lightgcn_propagation_matches_dense_formula_and_gradient():
    m = LightGCN(layers=2)
    m.n_users, m.n_items = 2, 2
    m._setup(np.array([0, 0, 1]), np.array([0, 1, 0]))
    A = m.adj.to_dense().double()
    eu = torch.randn(2, 3, dtype=torch.float32, requires_grad=True)
    ei = torch.randn(2, 3, dtype=torch.float32, requires_grad=True)
    fu, fi = m._propagate(eu, ei)
    E0 = torch.cat([eu, ei]).double()
    want = (E0 + A @ E0 + A @ A @ E0) / 3  # mean over layers 0..2
    assert torch.allclose(torch.cat([fu, fi]).double(), want, atol=1e-6)
    (fu.sum() + 2 * fi.sum()).backward()
    w = torch.tensor([1.0, 1, 2, 2], dtype=torch.float64).unsqueeze(1).expand(4, 3)
    g = (w + A @ w + A @ A @ w) / 3  # A symmetric
    assert torch.allclose(torch.cat([eu.grad, ei.grad]).double(), g, atol=1e-6)


def test_candidates_roundtrip(tmp_path, clusters):
    _, _, models = clusters
    recs = models["bpr_mf"].recommend(["c0u01", "c2u05", "stranger"], 6, with_scores=True)
    path = write_candidates(recs, tmp_path / "cands" / "bpr.parquet")
    df = pd.read_parquet(path)
    assert list(df.columns) == ["user_id", "rank", "item_id", "score"]
    assert len(df) == 18 and df["rank"].min() == 1 and df["rank"].max() == 6
    back = read_candidates(path, with_scores=True)
    assert back == {u: [(i, pytest.approx(s)) for i, s in lst] for u, lst in recs.items()}
    assert read_candidates(path) == {u: [i for i, _ in lst] for u, lst in recs.items()}
    plain = {"u": ["a", "b"]}
    write_candidates(plain, tmp_path / "plain.parquet")
    assert read_candidates(tmp_path / "plain.parquet") == plain
    assert pd.read_parquet(tmp_path / "plain.parquet")["score"].isna().all()


def test_evaluate_retriever_hand_computed():
    test = frame([("u1", "a", 5), ("u1", "b", 2), ("u2", "c", 4), ("u3", "d", 1)])
    recs = {"u1": ["b", "x", "a"], "u2": ["c"], "u3": ["d"]}
    # all test ratings relevant: u1 {a,b} hits at ranks 1,3 -> recall@2 = 1/2; u2 1; u3 1 -> 5/6
    m = evaluate_retriever(recs, test, [2])
    assert m["users_evaluated"] == 3 and m["recall@2"] == pytest.approx(5 / 6)
    # >= 4: u1 {a} (rank 3: no hit @2), u2 {c} hit, u3 has none -> excluded; recall@2 = 1/2
    m4 = evaluate_retriever(recs, test, [2], positive_threshold=4.0)
    assert m4["users_evaluated"] == 2 and m4["users_without_relevant"] == 1
    assert m4["recall@2"] == pytest.approx(0.5)


def test_build_retrievers_from_config():
    cfg = RetrieverBaselinesConf(dim=8, bpr_epochs=3, lightgcn_layers=1, positive_threshold=4.0, seed=9)
    ms = build_retrievers(cfg)
    assert list(ms) == ["popularity", "bpr_mf", "lightgcn"]
    assert ms["bpr_mf"].epochs == 3 and ms["bpr_mf"].reg == cfg.bpr_reg and ms["lightgcn"].layers == 1
    assert ms["lightgcn"].reg == cfg.lightgcn_reg and ms["lightgcn"].seed == 9
    assert all(m.positive_threshold == 4.0 for m in ms.values())
    with pytest.raises(ValueError, match="unknown retriever"):
        build_retrievers(RetrieverBaselinesConf(models=["itemknn"]))


def test_lightgcn_can_have_its_own_learning_rate_without_moving_bpr():
    from omegaconf import OmegaConf

    from exp3rt.baselines.retrievers import build_retrievers
    from exp3rt.config import RetrieverBaselinesConf

    cfg = OmegaConf.merge(OmegaConf.structured(RetrieverBaselinesConf), {"models": ["bpr_mf", "lightgcn"]})
    shared = build_retrievers(cfg)
    assert shared["lightgcn"].lr == shared["bpr_mf"].lr == 0.01
    own = build_retrievers(OmegaConf.merge(cfg, {"lightgcn_lr": 0.002}))
    assert own["lightgcn"].lr == 0.002 and own["bpr_mf"].lr == 0.01
