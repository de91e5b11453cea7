import numpy as np
import pandas as pd
import pytest
from helpers import toy_interactions, toy_prepared, typed

from exp3rt.config import ConfigError
from exp3rt.data.splits import assign_split, prepare_split


def split_cfg(**kw):
    return typed("split", kw)


def test_random_split_ratio_and_determinism():
    inter = toy_interactions()
    a = assign_split(inter, split_cfg(strategy="random", seed=1, test_ratio=0.2, valid_ratio=0.1))
    b = assign_split(inter, split_cfg(strategy="random", seed=1, test_ratio=0.2, valid_ratio=0.1))
    c = assign_split(inter, split_cfg(strategy="random", seed=2, test_ratio=0.2, valid_ratio=0.1))
    assert (a == b).all()
    assert (a != c).any()
    assert (a == "test").sum() == 60 and (a == "valid").sum() == 30 and (a == "train").sum() == 210


def test_per_user_ratio_keeps_every_user_in_train():
    inter = toy_interactions(per_user=10)
    labels = assign_split(inter, split_cfg(strategy="per_user", test_ratio=0.2, valid_ratio=0.1))
    frame = inter.assign(split=labels)
    per_user = frame.groupby("user_id")["split"].value_counts().unstack(fill_value=0)
    assert (per_user["test"] == 2).all() and (per_user["valid"] == 1).all() and (per_user["train"] == 7).all()


def test_leave_one_out_by_time_holds_out_each_users_latest():
    inter = toy_interactions(per_user=6)
    labels = assign_split(inter, split_cfg(strategy="per_user", leave_n_out=1, order="time", test_ratio=0.0))
    frame = inter.assign(split=labels)
    latest = frame.loc[frame.groupby("user_id")["timestamp"].idxmax()]
    assert (latest["split"] == "test").all()
    assert (frame["split"] == "test").sum() == inter["user_id"].nunique()


def test_per_user_never_empties_a_user():
    inter = toy_interactions(n_users=3, per_user=1)
    labels = assign_split(inter, split_cfg(strategy="per_user", leave_n_out=1, min_train_per_user=1))
    assert (labels == "train").all()


def test_temporal_split_puts_latest_in_test():
    inter = toy_interactions()
    labels = assign_split(inter, split_cfg(strategy="temporal", test_ratio=0.25))
    ts = inter["timestamp"].astype("int64").to_numpy()
    assert ts[labels == "test"].min() >= ts[labels == "train"].max()
    assert (labels == "test").sum() == 75


def test_temporal_split_without_timestamps_is_a_clear_error():
    inter = toy_interactions()
    inter.loc[3, "timestamp"] = pd.NA
    with pytest.raises(ConfigError, match="timestamp on every interaction; 1 of 300"):
        assign_split(inter, split_cfg(strategy="temporal"))


def test_unseen_user_split_has_disjoint_users():
    inter = toy_interactions(n_users=40)
    labels = assign_split(inter, split_cfg(strategy="unseen_user", test_ratio=0.25))
    frame = inter.assign(split=labels)
    test_users = set(frame.loc[frame.split == "test", "user_id"])
    assert len(test_users) == 10
    assert not test_users & set(frame.loc[frame.split == "train", "user_id"])


def test_predefined_uses_labels_and_rejects_unlabelled():
    inter = toy_interactions(n_users=4, per_user=5)
    given = inter[["user_id", "item_id"]].assign(
        split=np.where(np.arange(len(inter)) % 5 == 0, "test", "train")
    )
    labels = assign_split(inter, split_cfg(strategy="predefined"), {"split_labels": given})
    assert (labels == "test").sum() == 4
    with pytest.raises(ConfigError, match="2 interaction\\(s\\) have no split label"):
        assign_split(inter, split_cfg(strategy="predefined"), {"split_labels": given.iloc[2:]})
    with pytest.raises(ConfigError, match="needs split labels"):
        assign_split(inter, split_cfg(strategy="predefined"), {})


def test_prepare_split_persists_and_reloads_without_resampling(tmp_path):
    prepared = toy_prepared(tmp_path / "data")
    cfg = split_cfg(strategy="random", seed=3, test_ratio=0.2, warm_min_train=8)
    first = prepare_split(prepared, cfg)
    assert not first.reused
    assert {p.name for p in first.directory.iterdir()} >= {
        "train.parquet",
        "valid.parquet",
        "test.parquet",
        "meta.json",
        "split.yaml",
    }
    # rewrite the saved test file (with its size/checksum record, else it reads as damaged and is rebuilt):
    # a reload must return the file's rows, proving it is not resampled
    from exp3rt.artifacts import write_parquet_atomic

    tampered = first.test.iloc[:5]
    write_parquet_atomic(tampered, first.directory / "test.parquet")
    again = prepare_split(prepared, cfg)
    assert again.reused and len(again.test) == 5
    other = prepare_split(prepared, split_cfg(strategy="random", seed=4, test_ratio=0.2))
    assert other.directory != first.directory
    # warm flag follows the training count
    t = first.test
    assert ((t["user_train_count"] >= 8) == t["warm"]).all()
    assert (
        first.meta["stats"]["test_users_warm"] + first.meta["stats"]["test_users_cold"]
        == t["user_id"].nunique()
    )


def test_split_seed_is_separate_from_training_seed():
    from omegaconf import OmegaConf

    from exp3rt.config import validate

    cfg = validate(OmegaConf.create({"seed": 123, "split": {"strategy": "random", "seed": 0}}))
    assert cfg.split.seed == 0 and cfg.seed == 123  # seed 0 is a value, not "unset"


@pytest.mark.parametrize("strategy", ["random", "per_user", "temporal", "unseen_user"])
def test_carving_a_validation_part_leaves_the_test_pairs_as_they_were(strategy):
    """A search scores validation pairs (split.valid_ratio=0.1); the chosen trial is then reported on the
    test pairs of the split without the carving, and those must be the same pairs."""
    inter = toy_interactions(per_user=10)
    without = assign_split(inter, split_cfg(strategy=strategy, seed=3, test_ratio=0.2, valid_ratio=0.0))
    carved = assign_split(inter, split_cfg(strategy=strategy, seed=3, test_ratio=0.2, valid_ratio=0.1))
    assert ((without == "test") == (carved == "test")).all()
    assert (carved == "valid").sum() > 0 and not ((carved == "valid") & (without != "train")).any()
