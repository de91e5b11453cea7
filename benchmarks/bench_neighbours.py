"""``item_policy=similar_users`` at scale: every neighbour list the annotate stage needs.

A synthetic training set (numpy, seeded; not the synthetic world generator): ``--users`` users,
``--ratings`` distinct (user, item) ratings, ``--items`` items drawn with Zipf-like popularity
(``p(rank r) ∝ r^-zipf``), user activity log-normal (at least 2 ratings), ratings 1..5 around a per-user
bias, helpful votes geometric, timestamps random. Target pairs as ``run_item_profiles`` asks for them:
``--train-pairs`` training pairs (the rationale pairs) plus ``--test-pairs`` (user, item) pairs that are
not in training (the evaluation pairs); each needs one neighbour list (item, target user).

For each similarity it times :meth:`ItemProfilePlan.build` (``item_k`` = 3, the neighbour selection
and the plan's job table) and prints seconds, the process's RSS high-water mark (``getrusage``
maxrss; it includes the data, which is printed before), the number of lists, and checks a sample of
lists against a brute-force reference written here from the definitions (pure Python / numpy per pair).

* ``rating_cosine``: :class:`RatingCosine` (fit timed separately).
* ``profile_embedding``: the neighbour step on random unit vectors of dimension 384 placed in a
  :class:`ProfileEmbedding` (full scale); the MiniLM embedding time is measured on ``--embed-subset``
  synthetic profile texts and *extrapolated* linearly to ``--users`` (labelled as such), when the
  ``embed`` extra is installed.

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/bench_neighbours.py  # 100k users, 1M ratings
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_neighbours.py --scale 0.05  # a quick look

(``PYTHONPATH=.``: a script's own folder, not the working directory, heads ``sys.path``, so without it an
editable install of another checkout would be the ``exp3rt`` measured.) Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import pandas as pd

from exp3rt.teacher.selection import ItemProfilePlan, ProfileEmbedding, RatingCosine, helpful_order


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_train(n_users: int, n_items: int, n_ratings: int, zipf: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pop = np.arange(1, n_items + 1, dtype=np.float64) ** -zipf
    pop /= pop.sum()
    activity = rng.lognormal(0.0, 1.0, n_users)
    activity /= activity.sum()
    got = np.zeros(0, dtype=np.int64)
    extra = 1.15
    while len(got) < n_ratings:  # draw, drop repeated pairs, top up
        m = int((n_ratings - len(got)) * extra) + 1000
        u = rng.choice(n_users, size=m, p=activity)
        i = rng.choice(n_items, size=m, p=pop)
        got = np.unique(np.r_[got, u.astype(np.int64) * n_items + i])
        extra *= 1.5
    got = rng.permutation(got)[:n_ratings]
    u, i = got // n_items, got % n_items
    bias = rng.normal(3.5, 0.7, n_users)
    quality = rng.normal(0.0, 0.6, n_items)
    rating = np.clip(np.rint(bias[u] + quality[i] + rng.normal(0, 0.8, len(u))), 1, 5)
    uid = np.array([f"u{k:06d}" for k in range(n_users)], dtype=object)
    iid = np.array([f"i{k:05d}" for k in range(n_items)], dtype=object)
    return pd.DataFrame(
        {
            "user_id": uid[u],
            "item_id": iid[i],
            "rating": rating.astype(np.float64),
            "helpful_votes": rng.geometric(0.5, len(u)) - 1,
            "timestamp": rng.integers(1_000_000_000, 1_000_100_000, len(u)),
        }
    )


def make_pairs(
    train: pd.DataFrame, n_train_pairs: int, n_test_pairs: int, n_items: int, zipf: float, seed: int
):
    rng = np.random.default_rng(seed + 1)
    tp = train.iloc[rng.choice(len(train), size=min(n_train_pairs, len(train)), replace=False)][
        ["user_id", "item_id"]
    ]
    users = train["user_id"].unique()
    pop = np.arange(1, n_items + 1, dtype=np.float64) ** -zipf
    pop /= pop.sum()
    iid = np.array([f"i{k:05d}" for k in range(n_items)], dtype=object)
    seen = set(zip(train["user_id"], train["item_id"], strict=True))
    m = int(n_test_pairs * 1.2) + 100
    cand = zip(users[rng.integers(0, len(users), m)], iid[rng.choice(n_items, size=m, p=pop)], strict=True)
    test = list(dict.fromkeys(p for p in cand if p not in seen))[:n_test_pairs]
    return pd.concat([tp, pd.DataFrame(test, columns=["user_id", "item_id"])], ignore_index=True)


# ---------------------------------------------------------------------------------------------------
# brute force, from the definitions


def brute_cosine(train: pd.DataFrame):
    by_user: dict[str, dict[str, float]] = {}
    for u, i, r in zip(train["user_id"], train["item_id"], train["rating"], strict=True):
        by_user.setdefault(u, {})[i] = r

    def centred(u: str, leave_out: str | None) -> dict[str, float]:
        v = {i: r for i, r in by_user.get(u, {}).items() if i != leave_out}
        if not v:
            return {}
        mean = sum(v.values()) / len(v)
        return {i: r - mean for i, r in v.items()}

    def sims(u: str, item: str, reviewers) -> np.ndarray:
        x = centred(u, item)
        nx = np.sqrt(sum(a * a for a in x.values()))
        out = []
        for v in reviewers:
            y = centred(v, None)
            ny = np.sqrt(sum(a * a for a in y.values()))
            dot = sum(a * y[i] for i, a in x.items() if i in y)
            out.append(dot / (nx * ny) if nx > 0 and ny > 0 else 0.0)
        return np.array(out)

    return sims


def brute_embedding(users: pd.Index, matrix: np.ndarray):
    def sims(u: str, item: str, reviewers) -> np.ndarray:
        k = users.get_indexer([u])[0]
        if k < 0:
            return np.zeros(len(reviewers))
        return np.array([float(np.dot(matrix[k], matrix[users.get_indexer([v])[0]])) for v in reviewers])

    return sims


def check_sample(train: pd.DataFrame, plan: ItemProfilePlan, sims_of, k: int, n: int, seed: int) -> int:
    """Brute-force neighbour lists for ``n`` random jobs: reviewers of the item other than the target,
    by rounded similarity descending, ties in most-helpful order; returns how many were checked."""
    rng = np.random.default_rng(seed)
    jobs = plan.jobs.iloc[rng.choice(len(plan.jobs), size=min(n, len(plan.jobs)), replace=False)]
    by_item = {i: g for i, g in train.groupby("item_id", sort=False)}
    for job in jobs.itertuples():
        g = by_item.get(job.item_id)
        if g is None:
            assert job.n_reviews == 0
            continue
        g = g.iloc[helpful_order(g)]
        g = g[g["user_id"] != job.target_user]
        s = np.round(sims_of(job.target_user, job.item_id, list(g["user_id"])), 12)
        order = sorted(range(len(g)), key=lambda j: (-s[j], j))[:k]
        expect = list(g.index[order])
        assert list(job.row_ids) == expect, (job.item_id, job.target_user, list(job.row_ids), expect)
    return len(jobs)


def synthetic_profiles(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = (
        "plot pacing acting score visuals dialogue humour ending characters twist setting battery "
        "screen price comfort sound build quality delivery size colour story length tension"
    ).split()
    out = []
    for _ in range(n):
        likes = "\n".join(f"- {' '.join(rng.choice(words, 6))}" for _ in range(5))
        dislikes = "\n".join(f"- {' '.join(rng.choice(words, 6))}" for _ in range(3))
        out.append(f"[Like]\n{likes}\n\n[Dislike]\n{dislikes}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--ratings", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=30_000)
    ap.add_argument("--zipf", type=float, default=0.8)
    ap.add_argument("--train-pairs", type=int, default=200_000)
    ap.add_argument("--test-pairs", type=int, default=100_000)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply users, ratings, items and pairs")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--check", type=int, default=200, help="lists checked against brute force")
    ap.add_argument("--embed-subset", type=int, default=2000, help="profiles embedded with MiniLM (0: skip)")
    ap.add_argument("--only", choices=["rating_cosine", "profile_embedding"], default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    s = a.scale
    n_users, n_ratings, n_items = int(a.users * s), int(a.ratings * s), int(a.items * s)

    t0 = time.perf_counter()
    train = make_train(n_users, n_items, n_ratings, a.zipf, a.seed)
    pairs = make_pairs(train, int(a.train_pairs * s), int(a.test_pairs * s), n_items, a.zipf, a.seed)
    deg = train["item_id"].value_counts()
    print(
        f"data: {train['user_id'].nunique()} users, {len(train)} ratings, {len(deg)} items rated "
        f"(most-rated item {deg.iloc[0]} ratings, median {int(deg.median())}), {len(pairs)} target pairs "
        f"({int(a.train_pairs * s)} train + {len(pairs) - int(a.train_pairs * s)} test); "
        f"generated in {time.perf_counter() - t0:.1f} s; RSS now {current_rss_mb():.0f} MB"
    )
    ti = pairs["item_id"].map(deg).fillna(0).to_numpy()
    print(f"targets x reviewers (a dense per-item block would hold): {ti.sum():.3e} entries")

    if a.only in (None, "rating_cosine"):
        t0 = time.perf_counter()
        sim = RatingCosine().fit(train)
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        plan = ItemProfilePlan.build(train, pairs, "similar_users", a.k, 30, sim)
        t_plan = time.perf_counter() - t0
        print(
            f"rating_cosine: fit {t_fit:.1f} s, plan {t_plan:.1f} s, {len(plan.jobs)} neighbour lists, "
            f"peak RSS so far {maxrss_mb():.0f} MB"
        )
        n = check_sample(train, plan, brute_cosine(train), a.k, a.check, a.seed)
        print(f"rating_cosine: {n} lists equal to brute force")
        del plan, sim

    if a.only in (None, "profile_embedding"):
        users = sorted(train["user_id"].unique())
        rng = np.random.default_rng(a.seed + 2)
        m = rng.normal(size=(len(users), 384))
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        sim = ProfileEmbedding({})
        sim.users, sim.matrix = pd.Index(users, dtype=object), m
        t0 = time.perf_counter()
        plan = ItemProfilePlan.build(train, pairs, "similar_users", a.k, 30, sim)
        t_plan = time.perf_counter() - t0
        print(
            f"profile_embedding (random unit vectors, dim 384, measured at full scale): plan {t_plan:.1f} s, "
            f"{len(plan.jobs)} neighbour lists, peak RSS so far {maxrss_mb():.0f} MB"
        )
        n = check_sample(train, plan, brute_embedding(sim.users, m), a.k, a.check, a.seed)
        print(f"profile_embedding: {n} lists equal to brute force")
        del plan
        if a.embed_subset > 0:
            try:
                from exp3rt.teacher.selection import default_embedding_model_path

                default_embedding_model_path()
            except ImportError as e:
                print(f"embedding: skipped ({e})")
            else:
                texts = synthetic_profiles(a.embed_subset, a.seed)
                emb = ProfileEmbedding({f"p{j}": t for j, t in enumerate(texts)})
                emb._load()
                t0 = time.perf_counter()
                emb.fit()
                t_emb = time.perf_counter() - t0
                per = t_emb / len(texts)
                print(
                    f"embedding: MiniLM on {len(texts)} profiles (measured) {t_emb:.1f} s = "
                    f"{per * 1000:.1f} ms each; "
                    f"{n_users} profiles EXTRAPOLATED linearly: {per * n_users / 60:.0f} min; "
                    f"peak RSS {maxrss_mb():.0f} MB"
                )

    print(f"peak RSS (process high-water mark): {maxrss_mb():.0f} MB")


if __name__ == "__main__":
    main()
