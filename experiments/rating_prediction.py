#!/usr/bin/env python
"""Rating prediction (the paper's RMSE/MAE table): the EXP3RT student — expected and most likely
rating — against global/user/item mean, bias and biased MF on the same test
pairs, with warm/cold users and parse rate. One exp3rt-pipeline run.

    python experiments/rating_prediction.py                          # CPU demo (synthetic world)
    python experiments/rating_prediction.py --preset paper experiment=paper_imdb hydra/launcher=slurm_gpu
"""

import sys
from pathlib import Path

from exp3rt.recipes import Recipe, entity_view

KEYS = ["rmse", "mae", "rmse_warm", "rmse_cold", "parse_rate", "failures", "n"]

RECIPE = Recipe(
    name="rating_prediction",
    title="Rating prediction: EXP3RT student vs rating baselines",
    sweep=[],  # one run (a multirun of one job, so a SLURM launcher applies unchanged)
    view=lambda cmp: entity_view(
        cmp, "rating", KEYS, "RMSE / MAE on the same test pairs", plot_keys=["rmse", "mae"]
    ),
    results_root=Path(__file__).resolve().parent / "results",
)

if __name__ == "__main__":
    sys.exit(RECIPE.main())
