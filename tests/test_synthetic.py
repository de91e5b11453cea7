"""The synthetic world: determinism, scales, sizes, schema, ground truth in the text, and signal."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import dataset_yaml
from omegaconf import OmegaConf

from exp3rt.config import ConfigError, SyntheticWorldConf, validate
from exp3rt.data.loaders import load_dataset
from exp3rt.data.schema import INTERACTION_COLUMNS, ITEM_COLUMNS, RatingScale
from exp3rt.data.synthetic import generate_world, predicates, truth_match_features, vocab_for
from exp3rt.data.world_vocab import VERDICTS, VOCABS

CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset"
SENTENCE = re.compile(r"(?<=[.!])\s+")


def dataset_cfg(**overrides):
    node = {"name": "synthetic", "loader": "synthetic", "domain": "movie", **overrides}
    return validate(OmegaConf.create({"dataset": node})).dataset


@pytest.fixture(scope="module")
def movie5():
    return generate_world(SyntheticWorldConf(), "movie", RatingScale(1, 5))


@pytest.fixture(scope="module")
def movie10():
    return generate_world(SyntheticWorldConf(), "movie", RatingScale(1, 10))


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_same_world_other_seed_other_world():
    a = generate_world(SyntheticWorldConf(seed=3), "book", RatingScale(1, 5))
    b = generate_world(SyntheticWorldConf(seed=3), "book", RatingScale(1, 5))
    c = generate_world(SyntheticWorldConf(seed=4), "book", RatingScale(1, 5))
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    pd.testing.assert_frame_equal(a.items, b.items)
    pd.testing.assert_frame_equal(a.extras["user_truth"], b.extras["user_truth"])
    assert len(a.interactions) != len(c.interactions) or not a.interactions["rating"].equals(
        c.interactions["rating"]
    )
    pairs_a = set(zip(a.interactions.user_id, a.interactions.item_id, strict=True))
    pairs_c = set(zip(c.interactions.user_id, c.interactions.item_id, strict=True))
    assert len(pairs_a & pairs_c) < 0.3 * len(pairs_a)
    assert (a.items["title"] != c.items["title"]).mean() > 0.8
    assert a.extras["user_truth"]["likes"].tolist() != c.extras["user_truth"]["likes"].tolist()


def test_seed_zero_is_a_seed():
    a = generate_world(SyntheticWorldConf(seed=0), "movie", RatingScale(1, 5))
    b = generate_world(SyntheticWorldConf(seed=1), "movie", RatingScale(1, 5))
    assert not a.interactions["review"].head(50).equals(b.interactions["review"].head(50))


# --- ratings and scales ------------------------------------------------------------------------


@pytest.mark.parametrize("lo,hi,step", [(1, 5, 1), (1, 10, 1), (0.5, 5, 0.5)])
def test_ratings_on_the_scale_grid(lo, hi, step):
    scale = RatingScale(lo, hi, step)
    r = generate_world(SyntheticWorldConf(), "movie", scale).interactions["rating"].to_numpy()
    assert r.min() >= lo and r.max() <= hi
    on_grid = np.isclose((r - lo) / step, np.round((r - lo) / step))
    assert on_grid.all()
    # every level of the scale is used (not all mid values)
    assert set(np.round(r, 6)) == {round(v, 6) for v in scale.levels}


def test_rating_histogram_is_realistic(movie5, movie10):
    share = movie5.interactions["rating"].value_counts(normalize=True)
    # measured (seed 7): 1: .070  2: .120  3: .184  4: .205  5: .421
    assert share.idxmax() == 5.0
    assert share[4.0] + share[5.0] > 0.55  # skewed to the upper half
    assert 0.03 < share[1.0] < 0.15  # a real low tail, not only mid values
    assert 3.5 < movie5.interactions["rating"].mean() < 4.1
    assert movie5.interactions["rating"].std() > 1.0
    r10 = movie10.interactions["rating"]
    assert (r10 >= 6).mean() > 0.6 and 6.5 < r10.mean() < 8.0


def test_imdb_config_is_the_same_world_on_another_scale(movie5, movie10):
    a, b = movie5.interactions, movie10.interactions
    pd.testing.assert_frame_equal(movie5.items, movie10.items)
    assert (a.user_id == b.user_id).all() and (a.item_id == b.item_id).all()
    assert (a.timestamp == b.timestamp).all()
    # the same latent rating, rounded on each grid: positions differ by at most the two half-steps
    gap = np.abs((a.rating - 1) / 4 - (b.rating - 1) / 9)
    assert gap.max() <= 0.125 + 1 / 18 + 1e-9
    assert np.corrcoef(a.rating, b.rating)[0, 1] > 0.97


# --- sizes -------------------------------------------------------------------------------------


def test_sizes_within_bounds_and_no_repeats():
    w = SyntheticWorldConf(seed=11, n_users=60, n_items=40, min_per_user=5, max_per_user=12)
    ds = generate_world(w, "product", RatingScale(1, 5))
    inter = ds.interactions
    per_user = inter.groupby("user_id").size()
    assert len(per_user) == 60
    assert per_user.min() >= 5 and per_user.max() <= 12
    assert per_user.nunique() > 3  # counts vary
    assert len(ds.items) == 40 and inter["item_id"].isin(ds.items["item_id"]).all()
    assert not inter.duplicated(["user_id", "item_id"]).any()
    assert inter["_line"].tolist() == list(range(1, len(inter) + 1))


def test_popularity_is_skewed(movie5):
    counts = movie5.interactions["item_id"].value_counts()
    top10 = counts.head(int(0.1 * len(movie5.items))).sum() / counts.sum()
    assert top10 > 0.25  # the top 10 % of items collect over a quarter of the ratings
    flat = (
        generate_world(
            SyntheticWorldConf(popularity_skew=0.0, selection_bias=0.0), "movie", RatingScale(1, 5)
        )
        .interactions["item_id"]
        .value_counts()
    )
    assert flat.head(15).sum() / flat.sum() < top10


def test_default_world_is_fast():
    t0 = time.perf_counter()
    ds = generate_world(SyntheticWorldConf(), "movie", RatingScale(1, 5))
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"default world took {elapsed:.2f}s"
    assert 200 * 8 <= len(ds.interactions) <= 200 * 30


def test_impossible_world_is_rejected_with_a_sentence():
    with pytest.raises(ConfigError, match="max_per_user .* exceeds n_items"):
        load_dataset(dataset_cfg(world={"n_items": 10, "max_per_user": 30}))
    with pytest.raises(ValueError, match="likes_per_user \\+ dislikes_per_user"):
        generate_world(SyntheticWorldConf(likes_per_user=8, dislikes_per_user=8), "movie", RatingScale(1, 5))


# --- schema through the loader registry --------------------------------------------------------


def test_load_dataset_gives_the_canonical_schema():
    ds, problems = load_dataset(dataset_cfg(scale={"min": 1, "max": 10}))
    inter, items = ds.interactions, ds.items
    assert list(inter.columns) == INTERACTION_COLUMNS
    assert list(items.columns) == ITEM_COLUMNS
    assert str(inter["rating"].dtype) == "float64" and str(inter["timestamp"].dtype) == "Int64"
    assert str(inter["helpful_votes"].dtype) == "Int64"
    assert inter["user_id"].str.fullmatch(r"u\d{4}").all() and inter["item_id"].str.fullmatch(r"i\d{4}").all()
    assert ds.synthetic and ds.name == "synthetic" and ds.domain == "movie"
    assert (ds.scale.min, ds.scale.max) == (1.0, 10.0)
    assert problems.total_skipped == 0 and not problems.notes
    assert ds.summary()["users"] == 200 and ds.summary()["with_review"] == len(inter)
    assert all(isinstance(c, list | np.ndarray) and len(c) >= 1 for c in items["categories"])
    extra = json.loads(items["extra"].iloc[0])
    truth = ds.extras["item_truth"].iloc[0]
    assert extra["synthetic_truth"] == {"strong": list(truth["strong"]), "weak": list(truth["weak"])}
    assert set(ds.extras["user_truth"].columns) >= {"user_id", "likes", "dislikes", "bias"}
    assert set(ds.extras["item_truth"].columns) >= {"item_id", "strong", "weak"}


@pytest.mark.parametrize("name,top", [("synthetic", 5.0), ("synthetic_imdb", 10.0)])
def test_shipped_dataset_configs_load(name, top):
    cfg = validate(OmegaConf.create({"dataset": dataset_yaml(name)})).dataset
    ds, _ = load_dataset(cfg)
    assert ds.name == name and ds.scale.max == top
    assert ds.interactions["rating"].max() == top
    # the yaml spells out the same world as the dataclass defaults
    assert OmegaConf.to_container(cfg.world) == OmegaConf.to_container(
        OmegaConf.structured(SyntheticWorldConf)
    )


def test_unknown_domain_falls_back_to_the_generic_vocabulary():
    ds = generate_world(SyntheticWorldConf(n_users=20, n_items=30), "garden tools", RatingScale(1, 5))
    assert ds.domain == "garden tools"
    generic = set(VOCABS["item"].aspect_names)
    assert {a for s in ds.extras["item_truth"]["strong"] for a in s} <= generic
    assert vocab_for("Movies").domain == "movie" and vocab_for("item").domain == "item"


# --- the text carries the ground truth ---------------------------------------------------------


def _mentions(vocab, aspect: str, review: str, positive: bool) -> bool:
    nouns = [n for n, _ in vocab.aspect(aspect).nouns]
    preds = predicates(vocab, aspect, positive)
    for sent in SENTENCE.split(review.lower()):
        if any(n in sent for n in nouns) and any(p in sent for p in preds):
            return True
    return False


@pytest.mark.parametrize("domain", ["movie", "book", "product", "item"])
def test_reviews_state_the_true_likes_and_dislikes(domain):
    ds = generate_world(SyntheticWorldConf(seed=5, n_users=80), domain, RatingScale(1, 5))
    vocab = vocab_for(domain)
    users = ds.extras["user_truth"].set_index("user_id")
    items = ds.extras["item_truth"].set_index("item_id")
    checked = Counter()
    for row in ds.interactions.itertuples():
        assert row.review.strip() and row.summary.strip()
        likes, dislikes = set(users.likes[row.user_id]), set(users.dislikes[row.user_id])
        strong, weak = set(items.strong[row.item_id]), set(items.weak[row.item_id])
        for a in likes & strong:
            assert _mentions(vocab, a, row.review, True), (a, row.review)
            checked["liked_strong"] += 1
        for a in (likes | dislikes) & weak:
            assert _mentions(vocab, a, row.review, False), (a, row.review)
            checked["cared_weak"] += 1
        # an aspect the user cares about but the item is unremarkable in is never mentioned
        for a in (likes | dislikes) - strong - weak:
            low = row.review.lower()
            assert not any(n in low for n, _ in vocab.aspect(a).nouns), (a, row.review)
    assert checked["liked_strong"] > 200 and checked["cared_weak"] > 200


def test_reviews_vary_in_length_order_and_wording(movie5):
    reviews = movie5.interactions["review"]
    n_sent = reviews.map(lambda t: len(SENTENCE.split(t)))
    assert n_sent.min() >= 1 and n_sent.max() >= 6 and n_sent.nunique() >= 5
    assert reviews.nunique() > 0.95 * len(reviews)
    first = reviews.map(lambda t: SENTENCE.split(t)[0])
    assert first.nunique() > 200  # not one fixed opening
    # several wordings per aspect: "acting" praised with at least 4 distinct sentences
    praised = {s for t in reviews for s in SENTENCE.split(t) if "acting" in s.lower() or "performances" in s}
    assert len(praised) >= 8


def test_descriptions_name_genre_and_strong_aspects_only(movie5):
    vocab = vocab_for("movie")
    truth = movie5.extras["item_truth"].set_index("item_id")
    for row in movie5.items.itertuples():
        assert row.categories[0].lower() in row.description.lower()
        for a in truth.strong[row.item_id]:
            assert vocab.aspect(a).feature in row.description
        for a in truth.weak[row.item_id]:
            assert vocab.aspect(a).feature not in row.description
    assert movie5.items["title"].is_unique


def test_timestamps_increase_per_user_and_votes_are_skewed(movie5):
    inter = movie5.interactions
    for _, g in inter.groupby("user_id", sort=False):
        assert (np.diff(g["timestamp"].to_numpy()) > 0).all()
    ts = pd.to_datetime(inter["timestamp"], unit="s")
    assert ts.min().year >= 2015 and ts.max().year <= 2022
    assert (ts.max() - ts.min()).days > 3 * 365
    votes = inter["helpful_votes"]
    assert votes.min() >= 0 and votes.median() <= 1 and votes.max() >= 10
    assert (votes == 0).mean() > 0.4


def test_vocabulary_nouns_are_unambiguous():
    for vocab in VOCABS.values():
        for a in vocab.aspects:
            assert a.pos and a.neg and a.nouns
            for b in vocab.aspects:
                if a is b:
                    continue
                for n, _ in a.nouns:
                    assert not any(n in m for m, _ in b.nouns), (vocab.domain, a.name, b.name, n)
        for aspects in vocab.affinity.values():
            assert set(aspects) <= set(vocab.aspect_names)


# --- signal: the text predicts the rating ------------------------------------------------------


def _tokens(text: str) -> list[str]:
    w = re.findall(r"[a-z'-]+", text.lower())
    return w + [f"{a}_{b}" for a, b in zip(w, w[1:], strict=False)]


def _ridge_bow(train: list[str], y: np.ndarray, test: list[str], lam: float = 3.0) -> np.ndarray:
    """Ridge regression on binary unigram+bigram features seen at least twice in training."""
    df = Counter(t for doc in train for t in set(_tokens(doc)))
    index = {t: k for k, t in enumerate(t for t, c in df.items() if c >= 2)}

    def matrix(docs):
        m = np.zeros((len(docs), len(index)))
        for r, doc in enumerate(docs):
            cols = [index[t] for t in _tokens(doc) if t in index]
            m[r, cols] = 1.0
        return m

    x = matrix(train)
    w = np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ (y - y.mean()))
    return matrix(test) @ w + y.mean()


def _strip_verdicts(text: str) -> str:
    heads = tuple(v.split("{")[0] for band in VERDICTS for v in band)
    return " ".join(s for s in SENTENCE.split(text) if not s.startswith(heads))


def test_review_text_predicts_ratings_far_better_than_the_mean(movie5):
    inter = movie5.interactions
    perm = np.random.default_rng(0).permutation(len(inter))
    cut = int(0.8 * len(inter))
    tr, te = inter.iloc[perm[:cut]], inter.iloc[perm[cut:]]
    y, yt = tr["rating"].to_numpy(), te["rating"].to_numpy()

    def rmse(p):
        return float(np.sqrt(np.mean((yt - p) ** 2)))

    mu = y.mean()
    global_rmse = rmse(np.full(len(te), mu))
    user_rmse = rmse(te["user_id"].map(tr.groupby("user_id")["rating"].mean()).fillna(mu).to_numpy())
    text_rmse = rmse(_ridge_bow(tr["review"].tolist(), y, te["review"].tolist()))
    aspect_rmse = rmse(
        _ridge_bow([_strip_verdicts(t) for t in tr["review"]], y, [_strip_verdicts(t) for t in te["review"]])
    )
    # measured (seed 7, 1–5): global 1.280, user mean 1.223, text 0.666, text without verdicts 0.909
    assert user_rmse < global_rmse  # user means help a little
    assert text_rmse < 0.65 * global_rmse  # the review text helps a lot
    assert aspect_rmse < 0.8 * global_rmse  # and not only through the closing verdict


def test_bias_model_and_truth_profile_help(movie5):
    """User/item means help partly; the true likes×strong match (what profiles can carry) helps much more."""
    inter = movie5.interactions
    perm = np.random.default_rng(0).permutation(len(inter))
    cut = int(0.8 * len(inter))
    tr, te = inter.iloc[perm[:cut]], inter.iloc[perm[cut:]]
    y, yt = tr["rating"].to_numpy(), te["rating"].to_numpy()
    mu = y.mean()
    bu = pd.Series(0.0, index=inter["user_id"].unique())
    bi = pd.Series(0.0, index=inter["item_id"].unique())
    for _ in range(10):  # damped alternating user/item biases
        g = pd.Series(y - mu - tr["item_id"].map(bi).to_numpy()).groupby(tr["user_id"].to_numpy())
        bu = g.sum() / (g.count() + 5)
        g = pd.Series(y - mu - tr["user_id"].map(bu).to_numpy()).groupby(tr["item_id"].to_numpy())
        bi = g.sum() / (g.count() + 5)
    bias_pred = mu + te["user_id"].map(bu).fillna(0).to_numpy() + te["item_id"].map(bi).fillna(0).to_numpy()

    def feats(df):
        return truth_match_features(movie5, df)

    coef = np.linalg.lstsq(feats(tr), y, rcond=None)[0]
    truth_pred = feats(te) @ coef + te["user_id"].map(bu).fillna(0).to_numpy()

    def rmse(p):
        return float(np.sqrt(np.mean((yt - p) ** 2)))

    # measured (seed 7, split seed 0): global 1.280, bias 1.153, truth match + user bias 0.709
    g, b, t = rmse(np.full(len(te), mu)), rmse(bias_pred), rmse(truth_pred)
    assert b < 0.95 * g
    assert t < 0.7 * g
    assert coef[1] > 0.5 and coef[2] < -0.5 and coef[3] < -1.0  # likes lift, weak spots sink


def test_variation_of_world_size_keeps_the_config_defaults_small():
    w = SyntheticWorldConf()
    assert (w.n_users, w.n_items, w.min_per_user, w.max_per_user) == (200, 150, 8, 30)
    small = replace(w, n_users=5, n_items=9, min_per_user=2, max_per_user=3)
    ds = generate_world(small, "movie", RatingScale(1, 5))
    assert 10 <= len(ds.interactions) <= 15
