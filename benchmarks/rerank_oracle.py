"""What reranking a retriever's top-20 by rating can do at best on the synthetic world: the world's own
noise-free rating of each candidate (``exp3rt.data.synthetic``: item bias + the profile-match term; the
user's bias is the same for all of a user's candidates), with Gaussian noise added to stand in for a
student of that error, reorders LightGCN's candidates for every test user. Prints nDCG@10 before and after
for two definitions of a relevant item — every test item of the user, or only those rated ≥ 4 — and for
the rating alone or blended with the first-stage position (``eval.rerank_rating_weight``):

    python benchmarks/rerank_oracle.py                          # the method_cpu world and split
    python benchmarks/rerank_oracle.py dataset.world.selection_bias=2.0

In this world users pick what to rate mostly by popularity (``selection_bias`` tilts it towards items whose
description promises what they like), so a perfect rating predictor does not say *which* items a user
rated; it says which of them they liked. No student is involved: this bounds what any student can reach.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exp3rt import CONF_DIR  # noqa: E402
from exp3rt.baselines.retrievers import build_retrievers, relevant_sets  # noqa: E402
from exp3rt.config import RetrieverBaselinesConf, register_schemas  # noqa: E402
from exp3rt.data.prepare import prepare_dataset  # noqa: E402
from exp3rt.data.splits import prepare_split  # noqa: E402
from exp3rt.data.synthetic import W_DISLIKED_STRONG, W_DISLIKED_WEAK, W_LIKED_STRONG, W_LIKED_WEAK  # noqa: E402
from exp3rt.inference.rerank import rerank  # noqa: E402
from exp3rt.metrics import topk_metrics  # noqa: E402

NOISES = (0.0, 0.7)
WEIGHTS = (None, 0.5, 1.0, 2.0)


def main(overrides: list[str]) -> None:
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="pipeline", overrides=["experiment=method_cpu", *overrides])
    prepared = prepare_dataset(cfg.dataset, cfg.paths.data_dir)
    split = prepare_split(prepared, cfg.split)
    users_t = prepared.dataset.extras["user_truth"].set_index("user_id")
    items_t = prepared.dataset.extras["item_truth"].set_index("item_id")
    lo, hi = float(prepared.dataset.scale.min), float(prepared.dataset.scale.max)

    def truth(u: str, i: str) -> float:
        likes, dislikes = set(users_t.at[u, "likes"]), set(users_t.at[u, "dislikes"])
        strong, weak = set(items_t.at[i, "strong"]), set(items_t.at[i, "weak"])
        return float(
            items_t.at[i, "bias"]
            + W_LIKED_STRONG * len(likes & strong)
            + W_LIKED_WEAK * len(likes & weak)
            + W_DISLIKED_WEAK * len(dislikes & weak)
            + W_DISLIKED_STRONG * len(dislikes & strong)
        )

    print("| relevant | first stage | noise | rating alone | blend 0.5 | blend 1.0 | blend 2.0 |")
    print("|---|---|---|---|---|---|---|")
    for threshold in (None, 4.0):
        rcfg = OmegaConf.merge(
            OmegaConf.structured(RetrieverBaselinesConf),
            {"models": ["lightgcn"], "num_candidates": 20, "positive_threshold": threshold},
        )
        relevant = relevant_sets(split.test, threshold)
        users = sorted(u for u, s in relevant.items() if s)
        first = {
            u: list(c)[:20]
            for u, c in build_retrievers(rcfg)["lightgcn"].fit(split.train).recommend(users, 20).items()
        }
        judged = {u: relevant[u] for u in users}
        before = topk_metrics(first, judged, [10])["ndcg@10"]
        for noise in NOISES:
            rng = np.random.default_rng(0)
            # the truth shifted into the scale's middle (only the order within a user matters), plus noise
            scores = {
                u: [(i, 3.0 + truth(u, i) + rng.normal(0, noise), []) for i in c] for u, c in first.items()
            }
            cells = []
            for w in WEIGHTS:
                after = rerank(scores, rating_weight=w, scale=(lo, hi))
                cells.append(f"{topk_metrics(after, judged, [10])['ndcg@10']:.4f}")
            label = "every test item" if threshold is None else f"test items rated >= {threshold:g}"
            print(f"| {label} ({len(users)} users) | {before:.4f} | {noise} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
