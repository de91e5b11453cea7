"""Small builders used by several test modules (test doubles live in tests/, never in the package)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from exp3rt.config import validate
from exp3rt.data.prepare import PreparedData
from exp3rt.data.schema import Dataset, RatingScale, conform_interactions, conform_items


def typed(group: str, node: dict):
    """Validate one config group given as a plain dict; returns the typed node."""
    return validate(OmegaConf.create({group: node}))[group]


def toy_interactions(n_users: int = 30, n_items: int = 40, per_user: int = 10, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    t = 1_500_000_000
    for u in range(n_users):
        for i in rng.choice(n_items, size=per_user, replace=False):
            t += int(rng.integers(1, 1000))
            rows.append((f"u{u}", f"i{i}", float(rng.integers(1, 6)), f"review {u}-{i}", None, t, 0))
    df = pd.DataFrame(
        rows, columns=["user_id", "item_id", "rating", "review", "summary", "timestamp", "helpful_votes"]
    )
    return conform_interactions(df)


def toy_prepared(tmp: Path, inter: pd.DataFrame | None = None, extras: dict | None = None) -> PreparedData:
    inter = toy_interactions() if inter is None else inter
    items = conform_items(pd.DataFrame({"item_id": sorted(inter["item_id"].unique())}))
    ds = Dataset("toy", "movie", RatingScale(1, 5), inter, items, extras=extras or {})
    tmp.mkdir(parents=True, exist_ok=True)
    return PreparedData(tmp, "toyfingerprint", ds, {}, False)


def dataset_yaml(name: str):
    """A shipped ``conf/dataset/<name>.yaml`` as a plain node (its Hydra defaults list removed)."""
    from exp3rt import CONF_DIR

    node = OmegaConf.load(CONF_DIR / "dataset" / f"{name}.yaml")
    node.pop("defaults", None)
    return node


def rejection(compose_fn, overrides: list[str]) -> str:
    """What a user is told for these overrides: Hydra rejects type and enum errors while composing
    (each group's schema is part of its YAML), ``validate()`` rejects cross-field rules."""
    import pytest
    from hydra.errors import ConfigCompositionException

    from exp3rt.config import ConfigError

    try:
        validate(compose_fn(overrides))
    except ConfigError as e:
        return str(e)
    except ConfigCompositionException as e:
        return f"{e} {e.__cause__}"
    pytest.fail(f"{overrides} was accepted")


def blend_by_hand(rows: list[dict], beta: float, lo: float = 1.0, hi: float = 5.0) -> dict:
    """Each user's candidates ordered by β·(E[r] − lo)/(hi − lo) − rank/n, from rerank_scores.jsonl rows."""
    lists: dict = {}
    for r in rows:
        lists.setdefault(r["user_id"], []).append(r)
    out = {}
    for user, rs in lists.items():
        rs = sorted(rs, key=lambda r: r["first_stage_rank"])
        n = len(rs)
        keyed = sorted(range(n), key=lambda i: (-(beta * (rs[i]["expected"] - lo) / (hi - lo) - i / n), i))
        out[user] = [rs[i]["item_id"] for i in keyed]
    return out
