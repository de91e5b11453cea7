"""Load a dataset named by its config into canonical form, then apply the shared policies.

Each loader returns a :class:`~exp3rt.data.schema.Dataset` whose interactions carry one extra
column, ``_line`` (the source line or record number, 1-based), so the shared duplicate policy can name
the lines of a clash. :func:`load_dataset` applies, in order: the duplicate policy, k-core filtering,
and the final canonical dtypes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from exp3rt.config import DuplicatePolicy, Loader
from exp3rt.data.amazon import load_amazon2018
from exp3rt.data.files import require_file  # noqa: F401 - also imported from here
from exp3rt.data.problems import DataError, InputProblems, NoUsableData
from exp3rt.data.release import load_release
from exp3rt.data.schema import Dataset, RatingScale, conform_interactions, conform_items, scale_of  # noqa: F401
from exp3rt.data.synthetic import load_synthetic
from exp3rt.data.tabular import load_tabular
from exp3rt.data.topk import load_topk

LoaderFn = Callable[[object, InputProblems], Dataset]


def _registry() -> dict[Loader, LoaderFn]:
    # imported lazily so a loader's optional heavy imports cost nothing for the others

    return {
        Loader.synthetic: load_synthetic,
        Loader.amazon2018: load_amazon2018,
        Loader.exp3rt_release: load_release,
        Loader.tabular: load_tabular,
        Loader.lightgcn_topk: load_topk,
    }


def no_usable_interactions(cfg, problems: InputProblems) -> NoUsableData:
    """The one sentence for a loader that produced no interactions: each input file, what was read and
    why it was skipped."""
    if Loader(cfg.loader) == Loader.exp3rt_release:  # the rating files, not the profile files
        base = Path(str(cfg.path))
        files = [
            str(base / str(name)) for key, name in cfg.release.items() if key.startswith("rating_") and name
        ]
    else:
        meta = str(cfg.meta_path) if cfg.meta_path else None
        files = [f for f in problems.inputs if f != meta] or [str(cfg.path)]
    where = "; ".join(f"{f}: {problems.input_summary(f)}" for f in files)
    return NoUsableData(f"dataset '{cfg.name}': no usable interactions in {where}", files[0])


def load_dataset(cfg, problems: InputProblems | None = None) -> tuple[Dataset, InputProblems]:
    """Load ``cfg`` (a validated ``dataset`` config) and apply duplicates policy and k-core.

    A loader that yields no interactions (an empty file, a header-only CSV, every line skipped) raises
    :class:`NoUsableData`, as does a k-core filter that removes every interaction."""
    problems = problems or InputProblems(strict=bool(cfg.strict))
    loader = Loader(cfg.loader)
    dataset = _registry()[loader](cfg, problems)
    inter = dataset.interactions
    if len(inter) == 0:
        raise no_usable_interactions(cfg, problems)
    dataset.interactions = None  # the filters below own the frame now, so they can release columns
    if "_line" not in inter.columns:
        inter = inter.assign(_line=np.arange(1, len(inter) + 1))
    inter = apply_duplicate_policy(
        inter, DuplicatePolicy(cfg.duplicates), problems, source=str(cfg.path or cfg.name)
    )
    before = len(inter)
    inter = kcore_filter(inter, int(cfg.kcore.user), int(cfg.kcore.item), problems)
    if len(inter) == 0:
        raise NoUsableData(
            f"dataset '{cfg.name}': the k-core filter (dataset.kcore.user={int(cfg.kcore.user)}, "
            f"dataset.kcore.item={int(cfg.kcore.item)}) removed all {before} interactions; "
            f"set dataset.kcore.user=0 dataset.kcore.item=0 to keep them",
            str(cfg.path),
        )
    dataset.interactions = conform_interactions(inter.drop(columns=["_line"]))
    dataset.items = conform_items(dataset.items)
    return dataset, problems


def apply_duplicate_policy(
    inter: pd.DataFrame, policy: DuplicatePolicy, problems: InputProblems, source: str
) -> pd.DataFrame:
    """Resolve repeated (user, item) pairs: keep the first in file order, keep the latest by
    timestamp (file order breaks ties), or raise naming both lines."""
    # one int64 key per pair: far less memory than hashing two string columns on millions of rows
    users, _ = pd.factorize(inter["user_id"])
    items, item_index = pd.factorize(inter["item_id"])
    pair = pd.Series(users.astype(np.int64) * (len(item_index) + 1) + items, index=inter.index)
    dup_mask = pair.duplicated(keep=False)
    if not dup_mask.any():
        return inter
    n_extra = int(pair.duplicated(keep="first").sum())
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
    line = inter["_line"].to_numpy()
    if policy == DuplicatePolicy.keep_first:
        order = np.argsort(line, kind="stable")
        keep_sorted = ~pair.iloc[order].duplicated(keep="first").to_numpy()
    else:
        ts = inter["timestamp"] if "timestamp" in inter.columns else pd.Series(0, index=inter.index)
        ts = pd.to_numeric(ts, errors="coerce").astype("float64").fillna(-np.inf).to_numpy()
        order = np.lexsort((line, ts))  # by time, file order breaks ties; the last one wins
        keep_sorted = ~pair.iloc[order].duplicated(keep="last").to_numpy()
    keep = np.zeros(len(inter), dtype=bool)
    keep[order[keep_sorted]] = True
    del pair, users, items, order, keep_sorted
    out = filter_rows(inter, keep)
    problems.note(f"duplicate (user, item) rows resolved by policy {policy.value}", n_extra)
    return out


def filter_rows(frame: pd.DataFrame, keep: np.ndarray) -> pd.DataFrame:
    """``frame[keep]``, built one column at a time while each source column is released from
    ``frame``: the peak is the frame plus its largest column rather than two whole frames (review text
    dominates a million-row Amazon file). ``frame`` is emptied; callers pass a frame they own."""
    if keep.all():
        return frame
    columns = {}
    for name in list(frame.columns):
        columns[name] = frame.pop(name)[keep].reset_index(drop=True)
    return pd.DataFrame(columns, copy=False)


def kcore_filter(inter: pd.DataFrame, user_k: int, item_k: int, problems: InputProblems) -> pd.DataFrame:
    """Iteratively keep users with >= ``user_k`` and items with >= ``item_k`` interactions."""
    if user_k <= 1 and item_k <= 1:
        return inter
    before = len(inter)
    while True:
        n = len(inter)
        if user_k > 1:
            counts = inter["user_id"].map(inter["user_id"].value_counts())
            inter = filter_rows(inter, (counts >= user_k).to_numpy())
        if item_k > 1:
            counts = inter["item_id"].map(inter["item_id"].value_counts())
            inter = filter_rows(inter, (counts >= item_k).to_numpy())
        if len(inter) == n:
            break
    problems.note(
        f"interactions removed by k-core filter (user>={user_k}, item>={item_k})", before - len(inter)
    )
    return inter
