#!/usr/bin/env python
"""Ablations (the paper's ablation table): the same teacher artifacts, one student per rating-prompt
ablation — without reasoning, without the user profile / item profile / item description / average
rating, and raw reviews in place of profiles (conf/ablation/). The teacher runs once (shared by hash).

    python experiments/ablations.py                                  # CPU demo, all seven
    python experiments/ablations.py ablation=full,no_reasoning       # a shorter grid
    python experiments/ablations.py --preset paper experiment=paper_imdb hydra/launcher=slurm_gpu
"""

import sys
from pathlib import Path

from exp3rt.recipes import Recipe, runs_view

ABLATIONS = "full,no_reasoning,no_user_profile,no_item_profile,no_item_description,no_avg_rating,raw_reviews"
COLUMNS = [
    ("RMSE", "rating/student_expected/rmse"),
    ("MAE", "rating/student_expected/mae"),
    ("RMSE warm", "rating/student_expected/rmse_warm"),
    ("RMSE cold", "rating/student_expected/rmse_cold"),
    ("parse rate", "rating/student_expected/parse_rate"),
    ("nDCG@10 reranked", "rerank/after/ndcg@10"),
]


def view(cmp):
    for r in cmp.runs:
        r.label = r.lookup("ablation") or r.label
    full = next((r for r in cmp.runs if r.ok and r.label == "full"), None)
    base = full.value("rating/student_expected/rmse") if full else None
    lines = []
    if base is not None:
        for r in cmp.runs:
            v = r.value("rating/student_expected/rmse")
            if r.ok and r is not full and v is not None:
                lines.append(f"- {r.label}: RMSE {v - base:+.4f} vs full")
    table = runs_view(
        cmp,
        "Student RMSE per ablation (expected-rating readout)",
        COLUMNS,
        ["Change against the full model:", *lines] if lines else (),
    )
    table.data["rmse_vs_full"] = {
        r.label: (r.value("rating/student_expected/rmse") - base)
        for r in cmp.runs
        if base is not None and r.ok and r.value("rating/student_expected/rmse") is not None
    }
    return table


RECIPE = Recipe(
    name="ablations",
    title="Ablations: what each input of the rating prompt is worth",
    sweep=[f"ablation={ABLATIONS}", "experiment_name=ablations"],
    by=["ablation"],
    view=view,
    results_root=Path(__file__).resolve().parent / "results",
)

if __name__ == "__main__":
    sys.exit(RECIPE.main())
