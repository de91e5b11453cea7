"""Load a dataset named by its config into canonical form, then apply the shared policies.

Each loader returns a :class:`~exp3rt.data.schema.Dataset` whose interactions carry one extra
column, ``_line`` (the source line or record number, 1-based), so the shared duplicate policy can name
the lines of a clash. :func:`load_dataset` applies, in order: the duplicate policy, k-core filtering,
and the final canonical dtypes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from exp3rt.config import DuplicatePolicy, Loader
from exp3rt.data.problems import DataError, InputProblems
from exp3rt.data.schema import Dataset, RatingScale, conform_interactions, conform_items

LoaderFn = Callable[[object, InputProblems], Dataset]


def _registry() -> dict[Loader, LoaderFn]:
    # imported lazily so a loader's optional heavy imports cost nothing for the others
    from exp3rt.data.amazon import load_amazon2018
    from exp3rt.data.release import load_release
    from exp3rt.data.synthetic import load_synthetic
    from exp3rt.data.tabular import load_tabular

    return {
        Loader.synthetic: load_synthetic,
        Loader.amazon2018: load_amazon2018,
        Loader.exp3rt_release: load_release,
        Loader.tabular: load_tabular,
    }


def scale_of(cfg) -> RatingScale:
    return RatingScale(float(cfg.scale.min), float(cfg.scale.max), float(cfg.scale.step))


def load_dataset(cfg, problems: InputProblems | None = None) -> tuple[Dataset, InputProblems]:
    """Load ``cfg`` (a validated ``dataset`` config) and apply duplicates policy and k-core."""
    problems = problems or InputProblems(strict=bool(cfg.strict))
    loader = Loader(cfg.loader)
    dataset = _registry()[loader](cfg, problems)
    inter = dataset.interactions
    if "_line" not in inter.columns:
        inter = inter.assign(_line=np.arange(1, len(inter) + 1))
    inter = apply_duplicate_policy(inter, DuplicatePolicy(cfg.duplicates), problems, source=str(cfg.path or cfg.name))
    inter = kcore_filter(inter, int(cfg.kcore.user), int(cfg.kcore.item), problems)
    dataset.interactions = conform_interactions(inter.drop(columns=["_line"]))
    dataset.items = conform_items(dataset.items)
    return dataset, problems


def apply_duplicate_policy(
    inter: pd.DataFrame, policy: DuplicatePolicy, problems: InputProblems, source: str
) -> pd.DataFrame:
    """Resolve repeated (user, item) pairs: keep the first in file order, keep the latest by
    timestamp (file order breaks ties), or raise naming both lines."""
    dup_mask = inter.duplicated(["user_id", "item_id"], keep=False)
    if not dup_mask.any():
        return inter
    n_extra = int(inter.duplicated(["user_id", "item_id"], keep="first").sum())
    if policy == DuplicatePolicy.error:
        first = inter[dup_mask].sort_values("_line").iloc[0]
        clash = inter[dup_mask & (inter.user_id == first.user_id) & (inter.item_id == first.item_id)]
        lines = sorted(int(x) for x in clash["_line"])
        raise DataError(
            source,
            lines[1],
            "user_id,item_id",
            f"duplicate pair (user {first.user_id!r}, item {first.item_id!r}) also on line {lines[0]}; "
            f"{n_extra} duplicate row(s) in all — set dataset.duplicates=keep_first or keep_latest",
        )
    if policy == DuplicatePolicy.keep_first:
        out = inter.sort_values("_line", kind="stable").drop_duplicates(["user_id", "item_id"], keep="first")
    else:
        ts = inter["timestamp"] if "timestamp" in inter.columns else pd.Series(0, index=inter.index)
        order = inter.assign(_ts=pd.to_numeric(ts, errors="coerce").fillna(-np.inf))
        out = order.sort_values(["_ts", "_line"], kind="stable").drop_duplicates(["user_id", "item_id"], keep="last")
        out = out.drop(columns=["_ts"]).sort_values("_line", kind="stable")
    problems.note(f"duplicate (user, item) rows resolved by policy {policy.value}", n_extra)
    return out


def kcore_filter(inter: pd.DataFrame, user_k: int, item_k: int, problems: InputProblems) -> pd.DataFrame:
    """Iteratively keep users with >= ``user_k`` and items with >= ``item_k`` interactions."""
    if user_k <= 1 and item_k <= 1:
        return inter
    before = len(inter)
    while True:
        n = len(inter)
        if user_k > 1:
            counts = inter["user_id"].map(inter["user_id"].value_counts())
            inter = inter[counts >= user_k]
        if item_k > 1:
            counts = inter["item_id"].map(inter["item_id"].value_counts())
            inter = inter[counts >= item_k]
        if len(inter) == n:
            break
    problems.note(f"interactions removed by k-core filter (user>={user_k}, item>={item_k})", before - len(inter))
    return inter
