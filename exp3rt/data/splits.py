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

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from exp3rt.artifacts import (
    StagingDir,
    discard,
    fingerprint,
    folder_intact,
    read_meta,
    save_config,
    write_meta,
    write_parquet_atomic,
)
from exp3rt.config import ConfigError, HoldoutOrder, SplitStrategy
from exp3rt.data.prepare import PreparedData
from exp3rt.data.schema import arrow_to_pandas

log = logging.getLogger(__name__)

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


TRAIN, VALID, TEST = 0, 1, 2  # label codes; PARTS[code] is the name


def assign_split(inter: pd.DataFrame, cfg, extras: dict[str, pd.DataFrame] | None = None) -> np.ndarray:
    """Return an array of ``"train" | "valid" | "test"`` labels aligned with ``inter``'s rows."""
    return np.asarray(PARTS)[split_codes(inter, cfg, extras)]


def _tail(order: np.ndarray, n_test: int, n_valid: int, codes: np.ndarray) -> None:
    """Label the last ``n_test`` positions of ``order`` test and the ``n_valid`` before them valid."""
    n = len(order)
    codes[order[n - n_test :]] = TEST
    codes[order[n - n_test - n_valid : n - n_test]] = VALID


def split_codes(inter: pd.DataFrame, cfg, extras: dict[str, pd.DataFrame] | None = None) -> np.ndarray:
    """Like :func:`assign_split` but as int8 codes (TRAIN/VALID/TEST): cheap on millions of rows."""
    strategy = SplitStrategy(cfg.strategy)
    n = len(inter)
    codes = np.full(n, TRAIN, dtype=np.int8)
    rng = np.random.default_rng(int(cfg.seed))
    if strategy == SplitStrategy.random:
        _tail(rng.permutation(n), int(round(cfg.test_ratio * n)), int(round(cfg.valid_ratio * n)), codes)
    elif strategy == SplitStrategy.temporal:
        ts = _timestamps(
            inter,
            "split.strategy=temporal needs a timestamp on every interaction",
            "use split.strategy=random or per_user",
        )
        order = np.lexsort((np.arange(n), ts))  # by time, file order breaks ties
        _tail(order, int(round(cfg.test_ratio * n)), int(round(cfg.valid_ratio * n)), codes)
    elif strategy == SplitStrategy.per_user:
        codes = _per_user(inter, cfg, rng)
    elif strategy == SplitStrategy.unseen_user:
        user_codes, users = pd.factorize(inter["user_id"], sort=True)
        n_users = len(users)
        chosen = np.full(n_users, TRAIN, dtype=np.int8)
        _tail(
            rng.permutation(n_users),
            int(round(cfg.test_ratio * n_users)),
            int(round(cfg.valid_ratio * n_users)),
            chosen,
        )
        codes = chosen[user_codes]
    elif strategy == SplitStrategy.predefined:
        given = (extras or {}).get("split_labels")
        if given is None:
            raise ConfigError(
                "split.strategy=predefined needs split labels from the dataset (the EXP3RT release "
                "loader provides them); this dataset has none — choose random, per_user, temporal or "
                "unseen_user"
            )
        key = inter[["user_id", "item_id"]].merge(given, on=["user_id", "item_id"], how="left")
        if key["split"].isna().any():
            missing = key[key["split"].isna()].iloc[0]
            raise ConfigError(
                f"split.strategy=predefined: {int(key['split'].isna().sum())} interaction(s) have no split "
                f"label, e.g. user {missing.user_id!r} item {missing.item_id!r}"
            )
        codes = key["split"].map({name: code for code, name in enumerate(PARTS)}).to_numpy(dtype=np.int8)
    return codes


def _timestamps(inter: pd.DataFrame, need: str, instead: str) -> np.ndarray:
    ts = pd.to_numeric(inter["timestamp"], errors="coerce")
    if ts.isna().any():
        raise ConfigError(f"{need}; {int(ts.isna().sum())} of {len(inter)} have none — {instead}")
    return ts.to_numpy(dtype=np.float64)


def _per_user(inter: pd.DataFrame, cfg, rng: np.random.Generator) -> np.ndarray:
    n = len(inter)
    users, _ = pd.factorize(inter["user_id"])
    if HoldoutOrder(cfg.order) == HoldoutOrder.time:
        key = _timestamps(
            inter, "split.order=time needs a timestamp on every interaction", "use split.order=random"
        )
    else:
        key = rng.random(n)
    # position of each interaction within its user, latest / highest key last (file order breaks ties)
    order = np.lexsort((np.arange(n), key, users))
    n_u = np.bincount(users)[users]
    sorted_users = users[order]
    starts = np.r_[0, np.flatnonzero(sorted_users[1:] != sorted_users[:-1]) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    pos = np.empty(n, dtype=np.int64)
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
    codes = np.full(n, TRAIN, dtype=np.int8)
    codes[rank_from_end < n_test] = TEST
    codes[(rank_from_end >= n_test) & (rank_from_end < n_test + n_valid)] = VALID
    return codes


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
        if folder_intact(directory, [f"{name}.parquet" for name in PARTS], f"the split {directory.name}"):
            parts = {name: pd.read_parquet(directory / f"{name}.parquet") for name in PARTS}
            return Split(directory, fp, parts["train"], parts["valid"], parts["test"], meta, True)
    if directory.exists() and (meta is None or meta.get("fingerprint") == fp):
        discard(directory)  # damaged (a warning named the file): rebuilt below

    inter = prepared.dataset.interactions.reset_index(drop=True)
    codes = split_codes(inter, cfg, prepared.dataset.extras)
    # Arrow's chunk-wise filter: pandas' boolean indexing of Arrow-backed strings concatenated whole
    # columns first (1M Amazon reviews: 2.0 GiB peak instead of 1.3 GiB)
    table = pa.Table.from_pandas(inter, preserve_index=False)
    parts = {name: arrow_to_pandas(table.filter(pa.array(codes == code))) for code, name in enumerate(PARTS)}
    del codes, table
    if SplitStrategy(cfg.strategy) == SplitStrategy.predefined:
        if len(parts["train"]) == 0:  # e.g. the EXP3RT release: it publishes test-labelled rating files only
            labelled = ", ".join(f"{len(f)} {n}" for n, f in parts.items() if len(f))
            raise ConfigError(
                f"split.strategy=predefined: dataset '{prepared.dataset.name}' labels no pair as training "
                f"({labelled or 'no pairs at all'}), so neither a baseline nor the student has "
                "anything to learn from. "
                "Split these pairs with a seeded split instead: split=random split.test_ratio=0.2 "
                "split.valid_ratio=0.1 "
                f"(experiment=release_imdb does this)"
            )
        for name, frame in parts.items():
            if len(frame) == 0:
                log.warning(
                    "split predefined of dataset '%s': the source has no %s pairs",
                    prepared.dataset.name,
                    name,
                )
    elif len(parts["train"]) == 0 or len(parts["test"]) == 0:
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
            write_parquet_atomic(frame, tmp / f"{name}.parquet")
        save_config(cfg, tmp / "split.yaml")
        write_meta(
            tmp,
            "split",
            cfg,
            {"data": prepared.fingerprint},
            fp,
            stats=stats,
            dataset_dir=str(prepared.directory),
        )
    meta = read_meta(directory)
    return Split(directory, fp, parts["train"], parts["valid"], parts["test"], meta, False)
