#!/usr/bin/env python
"""Top-k reranking (the paper's nDCG/Recall/Hit table): a first-stage retriever's top-20 candidates per
test user before and after the EXP3RT student reranks them by expected rating, for LightGCN and BPR-MF.

    python experiments/topk_reranking.py                             # CPU demo (synthetic world)
    python experiments/topk_reranking.py --preset paper experiment=paper_imdb hydra/launcher=slurm_gpu
"""

import sys
from pathlib import Path

from exp3rt.recipes import Recipe, entity_view

KS = (1, 5, 10)
KEYS = [f"{m}@{k}" for m in ("ndcg", "recall", "hit") for k in KS]


def view(cmp):
    for r in cmp.runs:  # rows read "lightgcn first stage" / "lightgcn reranked"
        r.label = r.lookup("eval.rerank_retriever") or r.info.get("retriever") or r.label
    return entity_view(
        cmp,
        "rerank",
        KEYS,
        "First stage vs reranked (top-20 candidates)",
        plot_keys=["ndcg@10", "recall@10", "hit@10", "ndcg@5", "recall@5", "hit@5"],
        entities=["before", "after"],
        names={"before": "first stage", "after": "reranked"},
    )


RECIPE = Recipe(
    name="topk_reranking",
    title="Top-k reranking: first-stage retriever vs EXP3RT rerank",
    sweep=["eval.rerank=true", "eval.num_candidates=20", "eval.rerank_retriever=lightgcn,bpr_mf"],
    metrics=[
        "rerank/before/ndcg@10",
        "rerank/after/ndcg@10",
        "rerank/before/recall@10",
        "rerank/after/recall@10",
        "rerank/users",
        "rerank/seconds_per_user",
    ],
    by=["eval.rerank_retriever"],
    view=view,
    results_root=Path(__file__).resolve().parent / "results",
)

if __name__ == "__main__":
    sys.exit(RECIPE.main())
