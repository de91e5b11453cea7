"""Print the synthetic world's figures: generation time, rating histogram, and how well simple models
predict ratings (80/20 random split): global mean, user mean, item mean, damped user+item bias, ridge on
review bag-of-words (with and without the closing verdict sentences), and the true profile match.

    PYTHONPATH=. python benchmarks/synthetic_world.py [domain] [scale_max]
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter

import numpy as np
import pandas as pd

from exp3rt.config import SyntheticWorldConf
from exp3rt.data.schema import RatingScale
from exp3rt.data.synthetic import generate_world, truth_match_features
from exp3rt.data.world_vocab import VERDICTS

SENTENCE = re.compile(r"(?<=[.!])\s+")


def tokens(text: str) -> list[str]:
    w = re.findall(r"[a-z'-]+", text.lower())
    return w + [f"{a}_{b}" for a, b in zip(w, w[1:], strict=False)]


def ridge_bow(train, y, test, lam=3.0):
    df = Counter(t for doc in train for t in set(tokens(doc)))
    index = {t: k for k, t in enumerate(t for t, c in df.items() if c >= 2)}

    def matrix(docs):
        m = np.zeros((len(docs), len(index)))
        for r, doc in enumerate(docs):
            m[r, [index[t] for t in tokens(doc) if t in index]] = 1.0
        return m

    x = matrix(train)
    w = np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ (y - y.mean()))
    return matrix(test) @ w + y.mean()


def strip_verdicts(text: str) -> str:
    heads = tuple(v.split("{")[0] for band in VERDICTS for v in band)
    return " ".join(s for s in SENTENCE.split(text) if not s.startswith(heads))


def main(domain: str = "movie", top: float = 5.0) -> None:
    t0 = time.perf_counter()
    ds = generate_world(SyntheticWorldConf(), domain, RatingScale(1, top))
    print(f"generate_world({domain}, 1–{top:g}): {time.perf_counter() - t0:.3f}s")
    inter = ds.interactions
    print(ds.summary())
    hist = inter["rating"].value_counts().sort_index()
    print("histogram:", {f"{k:g}": f"{v} ({v / len(inter):.1%})" for k, v in hist.items()})
    print(f"reviews: {inter['review'].str.split().str.len().mean():.1f} words on average")
    perm = np.random.default_rng(0).permutation(len(inter))
    cut = int(0.8 * len(inter))
    tr, te = inter.iloc[perm[:cut]], inter.iloc[perm[cut:]]
    y, yt = tr["rating"].to_numpy(), te["rating"].to_numpy()
    mu = y.mean()

    def rmse(p):
        return float(np.sqrt(np.mean((yt - p) ** 2)))

    bu = pd.Series(0.0, index=inter["user_id"].unique())
    bi = pd.Series(0.0, index=inter["item_id"].unique())
    for _ in range(10):
        g = pd.Series(y - mu - tr["item_id"].map(bi).to_numpy()).groupby(tr["user_id"].to_numpy())
        bu = g.sum() / (g.count() + 5)
        g = pd.Series(y - mu - tr["user_id"].map(bu).to_numpy()).groupby(tr["item_id"].to_numpy())
        bi = g.sum() / (g.count() + 5)

    def feats(df):
        return truth_match_features(ds, df)

    coef = np.linalg.lstsq(feats(tr), y, rcond=None)[0]
    results = {
        "global mean": rmse(np.full(len(te), mu)),
        "user mean": rmse(te["user_id"].map(tr.groupby("user_id")["rating"].mean()).fillna(mu).to_numpy()),
        "item mean": rmse(te["item_id"].map(tr.groupby("item_id")["rating"].mean()).fillna(mu).to_numpy()),
        "user+item bias (damped)": rmse(
            mu + te["user_id"].map(bu).fillna(0).to_numpy() + te["item_id"].map(bi).fillna(0).to_numpy()
        ),
        "ridge BoW on review": rmse(ridge_bow(tr["review"].tolist(), y, te["review"].tolist())),
        "ridge BoW, verdicts removed": rmse(
            ridge_bow([strip_verdicts(t) for t in tr["review"]], y, [strip_verdicts(t) for t in te["review"]])
        ),
        "true profile match + user bias": rmse(feats(te) @ coef + te["user_id"].map(bu).fillna(0).to_numpy()),
    }
    base = results["global mean"]
    for name, value in results.items():
        print(f"  {name:32s} RMSE {value:.3f}  ({value / base:.0%} of global)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "movie", float(sys.argv[2]) if len(sys.argv) > 2 else 5.0)
