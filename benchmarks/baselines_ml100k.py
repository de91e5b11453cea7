"""Print RMSE/MAE of every rating baseline and Recall/nDCG@k of every retriever on MovieLens-100k.

Protocol: RecBole's ``ml-100k.inter`` (100,000 ratings, 1-5), seeded random 80/20 split by interaction
(numpy ``default_rng(42).permutation``, first 20% test). Retrievers train on every training rating as
a positive (``positive_threshold: null``) and rank every training item the user has not rated;
relevance = (a) every test rating, (b) test ratings >= 4 (users without one are excluded).

    python benchmarks/baselines_ml100k.py /tmp/ml-100k.inter
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pandas as pd
import torch

from exp3rt.baselines.rating import build_rating_baselines
from exp3rt.baselines.retrievers import build_retrievers, evaluate_retriever
from exp3rt.config import RatingBaselinesConf, RetrieverBaselinesConf
from exp3rt.data.schema import RatingScale
from exp3rt.metrics import mae, rmse


def load(path: str, seed: int = 42, test_ratio: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
    df = pd.read_csv(path, sep="\t")
    df.columns = [c.split(":")[0] for c in df.columns]
    df = df.astype({"user_id": str, "item_id": str, "rating": float})
    perm = np.random.default_rng(seed).permutation(len(df))
    n_test = int(round(test_ratio * len(df)))
    return df.iloc[perm[n_test:]], df.iloc[perm[:n_test]]


def main(path: str) -> None:
    torch.set_num_threads(2)
    train, test = load(path)
    out: dict = {"rating": {}, "retrieval": {}}
    for name, model in build_rating_baselines(RatingBaselinesConf(), RatingScale(1, 5)).items():
        t = time.time()
        pred = model.fit(train).predict_df(test)
        out["rating"][name] = {
            "rmse": round(rmse(test.rating, pred), 4),
            "mae": round(mae(test.rating, pred), 4),
            "fit_s": round(time.time() - t, 1),
        }
        print(name, out["rating"][name], flush=True)
    cfg = RetrieverBaselinesConf()
    for name, model in build_retrievers(cfg).items():
        t = time.time()
        model.fit(train)
        fit_s = time.time() - t
        recs = model.recommend(test.user_id.unique(), cfg.num_candidates)
        res = {"fit_s": round(fit_s, 1)}
        for tag, thr in (("all", None), ("ge4", 4.0)):
            m = evaluate_retriever(recs, test, [10, 20], positive_threshold=thr)
            res[tag] = {
                k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items() if "mrr" not in k
            }
        out["retrieval"][name] = res
        print(name, json.dumps(res), flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ml-100k.inter")
