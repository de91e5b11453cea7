"""EXP3RT release files: every reader on small fixture files (good and bad input), then the real samples."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from helpers import dataset_yaml
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import OmegaConf

from exp3rt.config import ConfigError, validate
from exp3rt.data.loaders import load_dataset
from exp3rt.data.problems import DataError, InputProblems
from exp3rt.data.release import (
    load_release,
    parse_item_description,
    read_profile_sft,
    read_profiles,
    read_rating_file,
    read_topk,
    split_profile,
)
from exp3rt.data.schema import RatingScale

REPO = Path(__file__).resolve().parents[1]
IMDB = RatingScale(1, 10)
BOOK = RatingScale(1, 5)

PERSONA = (
    "[Like]\n- Enjoys twists\n- Values creativity\n\n[Dislike]\n- Messy timelines\n\n[Average Rating]\n5.0"
)
SYNOPSIS = "[Like]\n- Witty dialogue\n\n[Dislike]\n- None\n\n[Average Rating]\n8.0"
IMDB_DESC = (
    "Title: North by Northwest (1959)\nGenres: Action, Adventure, Mystery, Thriller\n"
    "Directors: Alfred Hitchcock\nCast: Cary Grant, Eva Marie Saint, James Mason\n"
    "Plot: Madison Avenue advertising man Roger Thornhill is mistaken for a spy."
)
BOOK_DESC = (
    "Title: The Light Pirate: GMA Book Club Selection\nCategories: Books, Literature & Fiction, Action "
    "& Adventure\n"
    "Author: Lily Brooks-Dalton\nPlot: Set in the future, Wanda grows up after a hurricane."
)


def rec(user="u1", item="i1", score="9", **over) -> dict:
    r = {
        "user_id": user,
        "item_id": item,
        "user_persona": PERSONA,
        "item_synopsis": SYNOPSIS,
        "item_description": IMDB_DESC,
        "score": score,
    }
    r.update(over)
    return {k: v for k, v in r.items() if v is not ...}  # `...` removes a field


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=1))
    return path


def record_lines(path: Path) -> list[int]:
    """The physical line where each record of a list written by :func:`write_json` starts (indent 1:
    a record opens on a line indented by exactly one space)."""
    return [
        n
        for n, text in enumerate(path.read_text().splitlines(), start=1)
        if text.startswith(" ") and text[1:2] not in (" ", "}", "]")
    ]


# ---------------------------------------------------------------------------------------------------
# split_profile / parse_item_description


def test_split_profile_reads_both_sides_and_average():
    assert split_profile(PERSONA) == (["Enjoys twists", "Values creativity"], ["Messy timelines"], 5.0)


@pytest.mark.parametrize("none", ["- None", "- None.", "None.", "- none."])
def test_split_profile_none_side_is_empty(none):
    likes, dislikes, avg = split_profile(f"[Like]\n{none}\n\n[Dislike]\n- Too long\n")
    assert likes == [] and dislikes == ["Too long"] and avg is None


def test_split_profile_truncated_and_empty_bullets():
    # the release has synopses cut off before [Dislike]; an empty "-" bullet carries nothing
    likes, dislikes, avg = split_profile("[Like]\n- Great cast\n-\n- Off\n\n[Average Rating]\n8.8")
    assert (likes, dislikes, avg) == (["Great cast", "Off"], [], 8.8)


def test_split_profile_without_sections_and_bad_average():
    assert split_profile("just some prose") == ([], [], None)
    with pytest.raises(ValueError, match=r"\[Average Rating\].*'high'"):
        split_profile("[Like]\n- a\n[Average Rating]\nhigh")


BULLET = st.text(
    st.characters(codec="ascii", categories=["L", "N", "P", "Zs"]), min_size=1, max_size=20
).filter(lambda b: b.strip() and not b.strip().lower().rstrip(".") == "none" and b.strip()[0] not in "-*[")


@given(st.lists(BULLET, max_size=5), st.lists(BULLET, max_size=5), st.none() | st.integers(10, 100))
def test_split_profile_round_trips_rendered_profiles(likes, dislikes, avg10):
    def side(items):
        return "\n".join(f"- {b}" for b in items) if items else "- None."

    text = f"[Like]\n{side(likes)}\n\n[Dislike]\n{side(dislikes)}"
    if avg10 is not None:
        text += f"\n\n[Average Rating]\n{avg10 / 10}"
    assert split_profile(text) == (
        [b.strip() for b in likes],
        [b.strip() for b in dislikes],
        avg10 and avg10 / 10,
    )


def test_parse_item_description_imdb():
    d = parse_item_description(IMDB_DESC)
    assert d["title"] == "North by Northwest (1959)"
    assert d["categories"] == ["Action", "Adventure", "Mystery", "Thriller"]
    assert d["description"] == "Madison Avenue advertising man Roger Thornhill is mistaken for a spy."
    assert d["extra"] == {"Directors": "Alfred Hitchcock", "Cast": "Cary Grant, Eva Marie Saint, James Mason"}


def test_parse_item_description_amazon_book():
    d = parse_item_description(BOOK_DESC)
    assert d["title"] == "The Light Pirate: GMA Book Club Selection"  # a colon inside the value stays
    assert d["categories"] == ["Books", "Literature & Fiction", "Action & Adventure"]
    assert d["description"] == "Set in the future, Wanda grows up after a hurricane."
    assert d["extra"] == {"Author": "Lily Brooks-Dalton"}


def test_parse_item_description_plot_continuation_and_no_keys():
    d = parse_item_description("Title: X\nPlot: First line.\nWarning: spoilers follow.\nSecond line.")
    assert d["description"] == "First line.\nWarning: spoilers follow.\nSecond line."
    assert d["extra"] == {}
    d = parse_item_description("a plain blurb")
    assert d == {"title": None, "categories": [], "description": "a plain blurb", "extra": {}}


# ---------------------------------------------------------------------------------------------------
# read_rating_file


def test_read_rating_file_good(tmp_path):
    f = write_json(
        tmp_path / "r.json",
        [
            rec(),
            rec("u2", 53125, "1", rationale="Mismatch on pacing."),
            rec("u3", "i2", "10", rationale="  "),
        ],
    )
    p = InputProblems()
    df = read_rating_file(f, IMDB, p)
    assert list(df.columns) == [
        "user_id",
        "item_id",
        "rating",
        "user_profile",
        "item_profile",
        "item_description",
        "rationale",
        "_line",
    ]
    assert df["user_id"].tolist() == ["u1", "u2", "u3"]
    assert df["item_id"].tolist() == ["i1", "53125", "i2"]  # integer ids become strings
    assert df["rating"].tolist() == [9.0, 1.0, 10.0] and df["rating"].dtype == "float64"
    assert df["_line"].tolist() == record_lines(f)  # the physical line where each record starts
    assert df["_line"].iloc[0] == 2  # line 1 is the list's "["
    assert df["user_profile"].iloc[0] == PERSONA  # raw text kept
    assert df["rationale"].isna().tolist() == [True, False, True]
    assert df["rationale"].iloc[1] == "Mismatch on pacing."
    assert p.total_skipped == 0 and p.notes["empty rationale read as missing"] == 1


BAD_RECORDS = [
    (rec(item_synopsis=...), "item_synopsis", "missing field"),
    (rec(score="abc"), "score", "'abc' is not a number"),
    (rec(score="11"), "score", "outside the dataset scale [1, 10]"),
    (rec(score="0"), "score", "outside the dataset scale"),
    (rec(score=None), "score", "missing field"),
    (rec(user_persona="  "), "user_persona", "empty text"),
    (rec(user_id=""), "user_id", "empty text"),
    (rec(item_id=["x"]), "item_id", "expected a string, got list"),
    # a synopsis without [Like]/[Dislike] headers is kept as free text (tests/test_release_profiles.py)
    (rec(item_synopsis="**[Like]**\n- a\n**[Average Rating]**\n7 or 8"), "item_synopsis", "[Average Rating]"),
    (rec(user_persona="[Like]\n- a\n[Average Rating]\nhigh"), "user_persona", "[Average Rating]"),
    (rec(rationale=3), "rationale", "expected a string, got int"),
]


@pytest.mark.parametrize("bad,field,reason", BAD_RECORDS)
def test_read_rating_file_strict_names_file_record_field(tmp_path, bad, field, reason):
    f = write_json(tmp_path / "rating_test.json", [rec(), bad, rec("u9")])
    with pytest.raises(DataError) as ei:
        read_rating_file(f, IMDB, InputProblems(strict=True))
    e = ei.value
    line = record_lines(f)[1]  # record 2 starts on this physical line
    assert (e.file, e.line, e.field) == (str(f), line, field)
    assert f"rating_test.json, line {line}," in str(e) and f"field '{field}'" in str(e)
    assert "record 2" in str(e) and reason in str(e)


def test_read_rating_file_lenient_skips_and_counts(tmp_path):
    records = [rec("ok1"), *[b for b, _, _ in BAD_RECORDS], rec("ok2"), "not an object"]
    f = write_json(tmp_path / "r.json", records)
    p = InputProblems(strict=False)
    df = read_rating_file(f, IMDB, p)
    assert df["user_id"].tolist() == ["ok1", "ok2"]
    lines = record_lines(f)
    assert df["_line"].tolist() == [lines[0], lines[len(BAD_RECORDS) + 1]]
    assert p.total_skipped == len(BAD_RECORDS) + 1
    assert p.skipped["score: outside scale"] == 2
    assert p.skipped["score: missing"] == 1
    assert p.skipped["item_synopsis: missing"] == 1
    ex = p.examples["score: not a number"][0]
    assert (ex["file"], ex["line"], ex["field"]) == (str(f), lines[2], "score")


def test_read_rating_file_scale_is_the_configured_one(tmp_path):
    f = write_json(tmp_path / "r.json", [rec(score="5"), rec("u2", score="6")])
    p = InputProblems(strict=False)
    assert read_rating_file(f, BOOK, p)["rating"].tolist() == [5.0]
    assert p.skipped["score: outside scale"] == 1


def test_read_rating_file_invalid_json_names_file_and_json_line(tmp_path):
    f = tmp_path / "broken.json"
    f.write_text('[\n {"user_id": "u1",\n  "score": }\n]')
    with pytest.raises(DataError) as ei:
        read_rating_file(f, IMDB, InputProblems())
    assert ei.value.file == str(f) and ei.value.line == 3
    assert "broken.json, line 3" in str(ei.value) and "not valid JSON" in str(ei.value)
    p = InputProblems(strict=False)
    df = read_rating_file(f, IMDB, p)
    assert len(df) == 0 and "_line" in df.columns
    assert p.skipped["file is not valid JSON"] == 1


def test_read_rating_file_top_level_must_be_list(tmp_path):
    f = write_json(tmp_path / "obj.json", {"user_id": "u1"})
    with pytest.raises(DataError, match="top level must be a JSON list of records, got dict"):
        read_rating_file(f, IMDB, InputProblems())


# ---------------------------------------------------------------------------------------------------
# read_profiles / read_profile_sft


def test_read_profiles_user_and_item(tmp_path):
    users = write_json(
        tmp_path / "u.json",
        [
            {"user_id": "/user/ur1/", "user_persona": PERSONA},
            {"user_id": "/user/ur1/", "user_persona": SYNOPSIS},
        ],
    )
    p = InputProblems()
    df = read_profiles(users, "user", p)
    assert list(df.columns) == ["id", "profile", "likes", "dislikes", "average"]
    assert df["id"].tolist() == ["/user/ur1/"]  # a repeated id keeps its first profile
    assert df["likes"].iloc[0] == ["Enjoys twists", "Values creativity"]
    assert df["average"].iloc[0] == 5.0
    assert p.notes["repeated user_id in a user profile file: kept the first profile"] == 1

    items = write_json(
        tmp_path / "i.json", [{"item_id": "0053125", "item_synopsis": "[Like]\n- x\n\n[Dislike]\n- None."}]
    )
    df = read_profiles(items, "item", InputProblems())
    assert df.to_dict("records")[0] | {"average": None} == {
        "id": "0053125",
        "profile": "[Like]\n- x\n\n[Dislike]\n- None.",
        "likes": ["x"],
        "dislikes": [],
        "average": None,
    }
    assert pd.isna(df["average"].iloc[0])


def test_read_profiles_bad_input(tmp_path):
    f = write_json(tmp_path / "i.json", [{"item_id": "1", "item_synopsis": "[Like]\n- x"}, {"item_id": "2"}])
    with pytest.raises(DataError) as ei:
        read_profiles(f, "item", InputProblems())
    assert (ei.value.line, ei.value.field) == (record_lines(f)[1], "item_synopsis")
    assert "record 2" in str(ei.value)
    p = InputProblems(strict=False)
    assert read_profiles(f, "item", p)["id"].tolist() == ["1"]
    assert p.skipped["item_synopsis: missing"] == 1
    with pytest.raises(ValueError, match="kind must be 'user' or 'item'"):
        read_profiles(f, "movie", InputProblems())


def test_read_profile_sft(tmp_path):
    sets = ["[Like]\n- a\n\n[Dislike]\n- None", "[Like]\n- b\n\n[Dislike]\n- c", "[Like]\n- d"]
    f = write_json(
        tmp_path / "sft.json",
        [
            {"instruction": "Summarise.", "input": "\n---\n".join(sets), "output": PERSONA},
            {"instruction": "Summarise.", "input": sets[0], "output": ""},
        ],
    )
    with pytest.raises(DataError) as ei:
        read_profile_sft(f, InputProblems())
    assert (ei.value.line, ei.value.field) == (record_lines(f)[1], "output") and "empty text" in str(ei.value)
    p = InputProblems(strict=False)
    df = read_profile_sft(f, p)
    assert list(df.columns) == ["instruction", "input", "output", "n_sets"]
    assert df["n_sets"].tolist() == [3]
    assert df["output"].iloc[0] == PERSONA
    assert p.skipped["output: empty"] == 1


# ---------------------------------------------------------------------------------------------------
# read_topk


def write_topk(d: Path, train="0 1 0\n1\n2 2\n", test="0 2\n1 0 1\n2\n") -> Path:
    d.mkdir()
    (d / "user_list.txt").write_text("org_id remap_id\n/user/ur7/ 0\n/user/ur8/ 1\nA2X 2\n")
    (d / "item_list.txt").write_text("org_id remap_id\n0053125 0\n3896198 1\n1219827 2\n")
    (d / "train.txt").write_text(train)
    (d / "test.txt").write_text(test)
    return d


def test_read_topk_maps_back_to_original_ids(tmp_path):
    p = InputProblems()
    topk = read_topk(write_topk(tmp_path / "topk"), p)
    assert topk.train[["user_id", "item_id"]].values.tolist() == [
        ["/user/ur7/", "3896198"],
        ["/user/ur7/", "0053125"],
        ["A2X", "1219827"],
    ]
    assert topk.train["_line"].tolist() == [1, 1, 3]
    assert topk.test[["user_id", "item_id"]].values.tolist() == [
        ["/user/ur7/", "1219827"],
        ["/user/ur8/", "0053125"],
        ["/user/ur8/", "3896198"],
    ]
    assert str(topk.train["item_id"].dtype) == "string"  # leading zeros survive
    assert dict(zip(topk.user_ids["remap_id"], topk.user_ids["org_id"], strict=True)) == {
        0: "/user/ur7/",
        1: "/user/ur8/",
        2: "A2X",
    }
    assert (
        p.notes["users with no items in train.txt"] == 1 and p.notes["users with no items in test.txt"] == 1
    )


def test_read_topk_unknown_remap_id(tmp_path):
    d = write_topk(tmp_path / "topk", train="0 1\n1 0 9 x\n5 1\n")
    with pytest.raises(DataError) as ei:
        read_topk(d, InputProblems())
    assert (ei.value.file, ei.value.line, ei.value.field) == (str(d / "train.txt"), 2, "item_remap")
    assert "item remap id '9' is not in item_list.txt" in str(ei.value)
    p = InputProblems(strict=False)
    topk = read_topk(d, p)
    assert topk.train[["user_id", "item_id"]].values.tolist() == [
        ["/user/ur7/", "3896198"],
        ["/user/ur8/", "0053125"],
    ]
    assert p.total_skipped == 3  # item 9, item x, user 5
    assert p.examples[next(k for k in p.skipped if k.startswith("user_remap"))][0]["line"] == 3


def test_read_topk_bad_map_and_missing_files(tmp_path):
    d = write_topk(tmp_path / "topk")
    (d / "item_list.txt").write_text("org_id remap_id\n0053125 0\n3896198 0\n")
    with pytest.raises(DataError) as ei:
        read_topk(d, InputProblems())
    assert (ei.value.line, ei.value.field) == (3, "remap_id") and "already maps to '0053125'" in str(ei.value)
    (d / "user_list.txt").write_text("user remap\n/user/ur7/ 0\n")
    with pytest.raises(DataError, match="expected the header 'org_id remap_id'") as ei:
        read_topk(d, InputProblems())
    assert ei.value.line == 1
    (d / "test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="lacks test.txt"):
        read_topk(d, InputProblems())


# ---------------------------------------------------------------------------------------------------
# load_release on a fixture folder


def release_cfg(path: Path, **over):
    release = {"rating_train": "train.json", "rating_test": "test.json"} | over.pop("release", {})
    ds = {
        "name": "fixture",
        "loader": "exp3rt_release",
        "domain": "movie",
        "scale": {"min": 1, "max": 10},
        "path": str(path),
        "require_review": False,
        "release": release,
    } | over
    return validate(OmegaConf.create({"dataset": ds})).dataset


def write_release(d: Path) -> Path:
    d.mkdir()
    other = SYNOPSIS.replace("Witty dialogue", "Great score")
    write_json(d / "train.json", [rec("u1", "i1", "7"), rec("u2", "i2", "3", item_description=BOOK_DESC)])
    write_json(
        d / "test.json",
        [
            rec("u1", "i2", "9", rationale="Matches.", item_description=BOOK_DESC),
            rec("u2", "i1", "4", item_synopsis=other, item_description="x"),
        ],
    )
    write_json(
        d / "users.json",
        [
            {"user_id": "u1", "user_persona": "[Like]\n- other"},
            {"user_id": "u3", "user_persona": "[Dislike]\n- y"},
        ],
    )
    write_json(d / "sft.json", [{"instruction": "I", "input": "a\n---\nb", "output": "o"}])
    write_topk(d / "topk")
    return d


def test_load_release_fixture(tmp_path):
    d = write_release(tmp_path / "rel")
    cfg = release_cfg(
        d, release={"user_profiles": "users.json", "user_profile_sft": "sft.json", "topk_dir": "topk"}
    )
    p = InputProblems()
    ds = load_release(cfg, p)
    inter = ds.interactions
    assert inter[["user_id", "item_id"]].values.tolist() == [
        ["u1", "i1"],
        ["u2", "i2"],
        ["u1", "i2"],
        ["u2", "i1"],
    ]
    assert inter["rating"].tolist() == [7.0, 3.0, 9.0, 4.0]
    # the physical line where each record starts in its own file
    assert inter["_line"].tolist() == record_lines(d / "train.json") + record_lines(d / "test.json")
    assert inter["review"].isna().all() and inter["timestamp"].isna().all()
    assert ds.extras["split_labels"]["split"].tolist() == ["train", "train", "test", "test"]
    # items: first description per item, parsed
    items = ds.items.set_index("item_id")
    assert items.loc["i1", "title"] == "North by Northwest (1959)"
    assert list(items.loc["i2", "categories"]) == ["Books", "Literature & Fiction", "Action & Adventure"]
    assert json.loads(items.loc["i2", "extra"]) == {"Author": "Lily Brooks-Dalton"}
    assert (
        p.notes[
            "item descriptions that differ between records of one id (kept the first; per-pair texts "
            "in pair_profiles)"
        ]
        == 1
    )
    # profiles: rating-file text wins, the profile file adds u3
    up = ds.extras["user_profiles"].set_index("id")
    assert up.index.tolist() == ["u1", "u2", "u3"]
    assert up["source"].tolist() == ["rating_file", "rating_file", "profile_file"]
    assert up.loc["u1", "average"] == 5.0 and up.loc["u1", "likes"] == ["Enjoys twists", "Values creativity"]
    assert up.loc["u3", "dislikes"] == ["y"] and pd.isna(up.loc["u3", "average"])
    ip = ds.extras["item_profiles"].set_index("id")
    assert ip.loc["i1", "likes"] == ["Witty dialogue"] and ip.loc["i1", "dislikes"] == []
    pair = ds.extras["pair_profiles"].set_index(["user_id", "item_id"])
    assert "Great score" in pair.loc[("u2", "i1"), "item_profile"]
    assert pair.loc[("u2", "i1"), "item_description"] == "x"
    assert (
        p.notes[
            "item profiles that differ between records of one id (kept the first; per-pair texts in "
            "pair_profiles)"
        ]
        == 1
    )
    assert ds.extras["rationales"][["user_id", "item_id", "split", "rationale"]].values.tolist() == [
        ["u1", "i2", "test", "Matches."]
    ]
    assert ds.extras["user_profile_sft"]["n_sets"].tolist() == [2]
    assert len(ds.extras["topk_train"]) == 3 and len(ds.extras["topk_test"]) == 3
    assert "item_profile_sft" not in ds.extras and "topk" not in ds.extras


def test_load_release_through_registry(tmp_path):
    d = write_release(tmp_path / "rel")
    ds, p = load_dataset(release_cfg(d))
    assert ds.summary()["interactions"] == 4 and ds.summary()["with_review"] == 0
    assert "_line" not in ds.interactions.columns and pd.api.types.is_string_dtype(ds.interactions["review"])


def test_load_release_pair_in_two_splits(tmp_path):
    d = write_release(tmp_path / "rel")
    write_json(d / "test.json", [rec("u3", "i3"), rec("u1", "i1", "9")])
    with pytest.raises(DataError) as ei:
        load_release(release_cfg(d), InputProblems())
    line = record_lines(d / "test.json")[1]
    assert (ei.value.file, ei.value.line, ei.value.field) == (str(d / "test.json"), line, "user_id,item_id")
    assert f"also in the train file (line {record_lines(d / 'train.json')[0]} of train.json)" in str(ei.value)
    p = InputProblems(strict=False)
    ds = load_release(release_cfg(d), p)
    assert len(ds.interactions) == 3 and p.skipped["pair in two split files"] == 1


def test_load_release_config_errors(tmp_path):
    d = write_release(tmp_path / "rel")
    with pytest.raises(FileNotFoundError) as ei:
        load_release(release_cfg(d, release={"item_profiles": "nope.json"}), InputProblems())
    assert "config key 'dataset.release.item_profiles'" in str(ei.value) and str(d / "nope.json") in str(
        ei.value
    )
    with pytest.raises(FileNotFoundError, match="'dataset.release.topk_dir' names the folder"):
        load_release(release_cfg(d, release={"topk_dir": "missing"}), InputProblems())
    with pytest.raises(ConfigError, match="dataset.require_review=false"):
        load_release(release_cfg(d, require_review=True), InputProblems())
    with pytest.raises(ConfigError, match="at least one rating file"):
        load_release(release_cfg(d, release={"rating_train": None, "rating_test": None}), InputProblems())


# ---------------------------------------------------------------------------------------------------
# the real samples in ../shared/data


def conf_cfg(name: str, shared: Path):
    node = dataset_yaml(name)
    return validate(OmegaConf.create({"paths": {"shared_data": str(shared)}, "dataset": node})).dataset


@pytest.mark.shared_data
def test_real_imdb_rating_file(shared_data):
    p = InputProblems()
    df = read_rating_file(shared_data / "exp3rt-release-sample/imdb/rating_test_sample.json", IMDB, p)
    assert len(df) == 60 and p.total_skipped == 0
    first = df.iloc[0]
    assert (first.user_id, first.item_id, first.rating, first._line) == (
        "/user/ur55597043/",
        "0053125",
        9.0,
        2,  # the file's line 1 is "["; the first record starts on line 2
    )
    likes, dislikes, avg = split_profile(first.user_profile)
    assert likes[0] == "Enjoys unexpected twists and turns" and len(likes) == 5 and len(dislikes) == 5
    assert avg == 5.0
    assert split_profile(first.item_profile)[1:] == ([], 8.0)  # "[Dislike]\n- None"
    assert df["rationale"].isna().all()
    assert (df.iloc[-1].user_id, df.iloc[-1].item_id, df.iloc[-1].rating) == (
        "/user/ur94438173/",
        "1100089",
        6.0,
    )
    assert p.notes["item_synopsis without a [Dislike] section (truncated in the source; read as empty)"] == 5


@pytest.mark.shared_data
def test_real_amazon_book_rating_file(shared_data):
    df = read_rating_file(
        shared_data / "exp3rt-release-sample/amazon-book/rating_with_rationale_sample.json",
        BOOK,
        InputProblems(),
    )
    assert len(df) == 25 and df["rating"].sum() == 30.0 and df["rationale"].notna().all()
    first = df.iloc[0]
    assert (first.user_id, first.item_id, first.rating) == ("AHM2SCEWEBC7DV2CAZHFG3PIX37Q", "1538708272", 1.0)
    assert first.rationale.startswith('The user may not enjoy "The Light Pirate"')
    assert split_profile(first.user_profile)[2] == 3.6
    d = parse_item_description(first.item_description)
    assert d["extra"] == {"Author": "Lily Brooks-Dalton"} and d["categories"][0] == "Books"


@pytest.mark.shared_data
def test_real_profiles_sft_and_topk(shared_data):
    base = shared_data / "exp3rt-release-sample"
    users = read_profiles(base / "imdb/user_profiles_sample.json", "user", InputProblems())
    items = read_profiles(base / "imdb/item_profiles_sample.json", "item", InputProblems())
    assert len(users) == 40 and len(items) == 40
    assert users["id"].iloc[0] == "/user/ur55597043/" and users["average"].isna().all()
    assert items["id"].iloc[0] == "3896198" and items["likes"].iloc[0][0].startswith("Great humor and jokes")
    sft = read_profile_sft(base / "imdb/user_profile_sft_sample.json", InputProblems())
    assert len(sft) == 20 and sft["n_sets"].tolist()[:3] == [14, 13, 28]
    assert len(read_profile_sft(base / "imdb/item_profile_sft_sample.json", InputProblems())) == 20
    topk = read_topk(base / "topk-imdb", InputProblems())
    assert len(topk.user_ids) == 791 and len(topk.item_ids) == 1155
    assert topk.train["user_id"].nunique() == 791
    assert len(topk.train) == 11187 and len(topk.test) == 3426
    # train.txt line 1 is "0 750 1106 ..."; test.txt line 1 is "0 443 161"
    assert topk.train.iloc[:2][["user_id", "item_id"]].values.tolist() == [
        ["/user/ur55597043/", "0319061"],
        ["/user/ur55597043/", "1172049"],
    ]
    assert topk.test.iloc[0][["user_id", "item_id"]].tolist() == ["/user/ur55597043/", "0112641"]


@pytest.mark.shared_data
def test_real_release_configs(shared_data):
    ds, p = load_dataset(conf_cfg("release_imdb_sample", shared_data))
    assert ds.summary() | {"mean_rating": round(ds.summary()["mean_rating"], 4)} == {
        "name": "release_imdb_sample",
        "synthetic": False,
        "domain": "movie",
        "scale": [1.0, 10.0],
        "interactions": 60,
        "users": 29,
        "items": 59,
        "with_review": 0,
        "mean_rating": 7.0833,
    }
    assert p.total_skipped == 0
    assert set(ds.extras["split_labels"]["split"]) == {"test"}
    assert len(ds.extras["user_profiles"]) == 40  # 29 from the ratings + 11 only in the profile file
    assert (ds.extras["user_profiles"]["source"] == "rating_file").sum() == 29
    assert ds.items.set_index("item_id").loc["0053125", "title"] == "North by Northwest (1959)"
    assert ds.extras["topk_train"]["user_id"].nunique() == 791
    assert "rationales" not in ds.extras

    book, _ = load_dataset(conf_cfg("release_amazon_book_sample", shared_data))
    assert len(book.interactions) == 25 and book.scale == BOOK and book.domain == "book"
    assert len(book.extras["rationales"]) == 25
    assert not math.isnan(book.extras["user_profiles"]["average"].iloc[0])
