"""Train / valid / test splits, persisted once and reloaded — never resampled.

Strategies (``conf/split/``):

* ``random`` — a seeded permutation of interactions; the last ``test_ratio`` are test, the
  ``valid_ratio`` before them valid.
* ``per_user`` — each user keeps at least ``min_train_per_user`` training interactions and holds
  out ``leave_n_out`` of them (or ``round(test_ratio * n_u)``), chosen at random or the latest in time
  (``order``). Validation takes the next ones the same way.
* ``temporal`` — a global time cut: the latest ``test_ratio`` of interactions are test.
* ``unseen_user`` — a seeded ``test_ratio`` of users with all their interactions are test (every test
  user is cold).
* ``predefined`` — the source's own labels (``extras["split_labels"]``, e.g. the EXP3RT release files).

Every test and valid row carries ``user_train_count`` and ``warm`` (``user_train_count >=
warm_min_train``), so metrics can be reported for warm and cold users. The split seed lives in
``split.seed``, apart from the training seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from exp3rt.artifacts import StagingDir, fingerprint, read_meta, save_config, write_meta
from exp3rt.config import ConfigError, HoldoutOrder, SplitStrategy
from exp3rt.data.prepare import PreparedData

PARTS = ("train", "valid", "test")


@dataclass
class Split:
    directory: Path
    fingerprint: str
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    meta: dict
    reused: bool

    def part(self, name: str) -> pd.DataFrame:
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]


def assign_split(inter: pd.DataFrame, cfg, extras: dict[str, pd.DataFrame] | None = None) -> np.ndarray:
    """Return an array of ``"train" | "valid" | "test"`` labels aligned with ``inter``'s rows."""
    strategy = SplitStrategy(cfg.strategy)
    n = len(inter)
    labels = np.full(n, "train", dtype=object)
    rng = np.random.default_rng(int(cfg.seed))
    if strategy == SplitStrategy.random:
        order = rng.permutation(n)
        n_test, n_valid = int(round(cfg.test_ratio * n)), int(round(cfg.valid_ratio * n))
        labels[order[n - n_test :]] = "test"
        labels[order[n - n_test - n_valid : n - n_test]] = "valid"
    elif strategy == SplitStrategy.temporal:
        ts = pd.to_numeric(inter["timestamp"], errors="coerce")
        if ts.isna().any():
            raise ConfigError(
                f"split.strategy=temporal needs a timestamp on every interaction; "
                f"{int(ts.isna().sum())} of {n} have none — use split.strategy=random or per_user"
            )
        order = np.lexsort((np.arange(n), ts.to_numpy()))  # by time, file order breaks ties
        n_test, n_valid = int(round(cfg.test_ratio * n)), int(round(cfg.valid_ratio * n))
        labels[order[n - n_test :]] = "test"
        labels[order[n - n_test - n_valid : n - n_test]] = "valid"
    elif strategy == SplitStrategy.per_user:
        labels = _per_user(inter, cfg, rng)
    elif strategy == SplitStrategy.unseen_user:
        users = np.sort(inter["user_id"].unique())
        perm = rng.permutation(len(users))
        n_test, n_valid = int(round(cfg.test_ratio * len(users))), int(round(cfg.valid_ratio * len(users)))
        test_users = set(users[perm[len(users) - n_test :]])
        valid_users = set(users[perm[len(users) - n_test - n_valid : len(users) - n_test]])
        labels[inter["user_id"].isin(test_users).to_numpy()] = "test"
        labels[inter["user_id"].isin(valid_users).to_numpy()] = "valid"
    elif strategy == SplitStrategy.predefined:
        given = (extras or {}).get("split_labels")
        if given is None:
            raise ConfigError(
                "split.strategy=predefined needs split labels from the dataset (the EXP3RT release "
                "loader provides them); this dataset has none — choose random, per_user, temporal or unseen_user"
            )
        key = inter[["user_id", "item_id"]].merge(given, on=["user_id", "item_id"], how="left")
        if key["split"].isna().any():
            missing = key[key["split"].isna()].iloc[0]
            raise ConfigError(
                f"split.strategy=predefined: {int(key['split'].isna().sum())} interaction(s) have no split "
                f"label, e.g. user {missing.user_id!r} item {missing.item_id!r}"
            )
        labels = key["split"].to_numpy(dtype=object)
    return labels


def _per_user(inter: pd.DataFrame, cfg, rng: np.random.Generator) -> np.ndarray:
    n = len(inter)
    users = inter["user_id"].to_numpy()
    if HoldoutOrder(cfg.order) == HoldoutOrder.time:
        ts = pd.to_numeric(inter["timestamp"], errors="coerce")
        if ts.isna().any():
            raise ConfigError("split.order=time needs timestamps on every interaction; use split.order=random")
        key = ts.to_numpy(dtype=float)
    else:
        key = rng.random(n)
    # position of each interaction within its user, latest / highest key last
    order = np.lexsort((key, users))
    counts = pd.Series(users).value_counts()
    n_u = counts.reindex(users).to_numpy()
    pos = np.empty(n, dtype=np.int64)
    sorted_users = users[order]
    starts = np.r_[0, np.flatnonzero(sorted_users[1:] != sorted_users[:-1]) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    pos[order] = np.arange(n) - group_start
    rank_from_end = n_u - 1 - pos  # 0 = the latest / last drawn
    if cfg.leave_n_out is not None:
        n_test = np.full(n, int(cfg.leave_n_out))
        n_valid = np.full(n, int(cfg.leave_n_out) if cfg.valid_ratio > 0 else 0)
    else:
        n_test = np.rint(cfg.test_ratio * n_u).astype(int)
        n_valid = np.rint(cfg.valid_ratio * n_u).astype(int)
    # never leave a user with fewer than min_train_per_user training interactions
    room = np.maximum(n_u - int(cfg.min_train_per_user), 0)
    n_test = np.minimum(n_test, room)
    n_valid = np.minimum(n_valid, room - n_test)
    labels = np.full(n, "train", dtype=object)
    labels[rank_from_end < n_test] = "test"
    labels[(rank_from_end >= n_test) & (rank_from_end < n_test + n_valid)] = "valid"
    return labels


def _annotate_warm(parts: dict[str, pd.DataFrame], warm_min_train: int) -> None:
    train_counts = parts["train"]["user_id"].value_counts()
    for name in ("valid", "test"):
        frame = parts[name]
        count = frame["user_id"].map(train_counts).fillna(0).astype("int64")
        frame["user_train_count"] = count.to_numpy()
        frame["warm"] = (count >= warm_min_train).to_numpy()


def split_fingerprint(prepared: PreparedData, cfg) -> str:
    return fingerprint("split", prepared.fingerprint, cfg)


def prepare_split(prepared: PreparedData, cfg) -> Split:
    """Create the split once under ``<prepared>/splits/`` and reload it on every later call."""
    fp = split_fingerprint(prepared, cfg)
    directory = prepared.directory / "splits" / f"{SplitStrategy(cfg.strategy).value}-{fp[:12]}"
    meta = read_meta(directory)
    if meta is not None and meta.get("fingerprint") == fp:
        parts = {name: pd.read_parquet(directory / f"{name}.parquet") for name in PARTS}
        return Split(directory, fp, parts["train"], parts["valid"], parts["test"], meta, True)

    inter = prepared.dataset.interactions.reset_index(drop=True)
    labels = assign_split(inter, cfg, prepared.dataset.extras)
    parts = {name: inter[labels == name].reset_index(drop=True) for name in PARTS}
    if len(parts["train"]) == 0 or len(parts["test"]) == 0:
        raise ConfigError(
            f"split {SplitStrategy(cfg.strategy).value} of dataset '{prepared.dataset.name}' left "
            f"{len(parts['train'])} train and {len(parts['test'])} test interactions; adjust split ratios"
        )
    _annotate_warm(parts, int(cfg.warm_min_train))
    counts = {name: int(len(frame)) for name, frame in parts.items()}
    test = parts["test"]
    stats = {
        "counts": counts,
        "test_users": int(test["user_id"].nunique()),
        "test_users_warm": int(test.loc[test["warm"], "user_id"].nunique()),
        "test_users_cold": int(test.loc[~test["warm"], "user_id"].nunique()),
        "test_items_unseen_in_train": int((~test["item_id"].isin(parts["train"]["item_id"])).sum()),
    }
    with StagingDir(directory) as tmp:
        for name, frame in parts.items():
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
        save_config(cfg, tmp / "split.yaml")
        write_meta(tmp, "split", cfg, {"data": prepared.fingerprint}, fp, stats=stats, dataset_dir=str(prepared.directory))
    meta = read_meta(directory)
    return Split(directory, fp, parts["train"], parts["valid"], parts["test"], meta, False)
