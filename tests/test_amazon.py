"""Amazon 2018 loader: field mapping, every bad-input case (strict and lenient), variants, metadata,
and the real Magazine_Subscriptions sample."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import orjson
import pytest
from helpers import dataset_yaml
from omegaconf import OmegaConf

from exp3rt.config import validate
from exp3rt.data import amazon
from exp3rt.data.amazon import clean_html, load_amazon2018
from exp3rt.data.loaders import load_dataset
from exp3rt.data.problems import DataError, InputProblems

REPO = Path(__file__).resolve().parents[1]


def review(user="U1", item="I1", rating=5.0, text="Great read.", t=1500000000, **extra) -> dict:
    rec = {
        "overall": rating,
        "verified": True,
        "reviewTime": "07 14, 2017",
        "reviewerID": user,
        "asin": item,
        "reviewerName": "Someone",
        "reviewText": text,
        "summary": "Five Stars",
        "unixReviewTime": t,
    }
    rec.update(extra)
    return {k: v for k, v in rec.items() if v is not _DROP}


_DROP = object()  # pass as a field value to leave the field out of the record


def write_lines(path: Path, lines: list, gz: bool = False) -> Path:
    data = b"".join((ln if isinstance(ln, bytes) else orjson.dumps(ln)) + b"\n" for ln in lines)
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


def make_cfg(path, **over):
    ds = {"name": "t", "loader": "amazon2018", "path": str(path), "domain": "product"}
    ds.update(over)
    return validate(OmegaConf.create({"dataset": ds})).dataset


def load(path, strict=True, **over):
    problems = InputProblems(strict=strict)
    return load_amazon2018(make_cfg(path, strict=strict, **over), problems), problems


# ---------------------------------------------------------------------------------------- mapping


@pytest.mark.parametrize("gz", [False, True])
def test_fields_are_mapped_and_votes_parsed(tmp_path, gz):
    path = write_lines(
        tmp_path / ("r.json.gz" if gz else "r.json"),
        [
            review("U1", "I1", 5.0, "Loved it", 1500000000, vote="1,234"),
            review("U2", "I1", 2, "Meh", 1500000100, vote="7", summary=_DROP),
            review("U1", "I2", 4.0, "Fine", _DROP),
            review("U3", "I2", 1.0, "Bad", 1500000200, vote=3),
        ],
        gz=gz,
    )
    ds, problems = load(path)
    inter = ds.interactions
    assert list(inter.columns) == [
        "user_id", "item_id", "rating", "review", "summary", "timestamp", "helpful_votes", "_line",
    ]  # fmt: skip
    assert inter["user_id"].tolist() == ["U1", "U2", "U1", "U3"]
    assert inter["item_id"].tolist() == ["I1", "I1", "I2", "I2"]
    assert inter["rating"].tolist() == [5.0, 2.0, 4.0, 1.0]
    assert inter["review"].tolist() == ["Loved it", "Meh", "Fine", "Bad"]
    assert inter["summary"].isna().tolist() == [False, True, False, False]
    assert inter["timestamp"].isna().tolist() == [False, False, True, False]
    assert int(inter["timestamp"].iloc[0]) == 1500000000
    assert inter["helpful_votes"].tolist() == [1234, 7, 0, 3]
    assert inter["_line"].tolist() == [1, 2, 3, 4]
    assert problems.notes["vote: thousands separator stripped (e.g. '1,234' -> 1234)"] == 1
    assert problems.total_skipped == 0
    assert ds.items["item_id"].tolist() == ["I1", "I2"]  # no meta file: bare rows, first-seen order
    assert ds.items["title"].isna().all()
    assert (ds.name, ds.domain, ds.scale.min, ds.scale.max) == ("t", "product", 1.0, 5.0)


def test_large_vote_with_several_separators(tmp_path):
    path = write_lines(tmp_path / "r.json", [review(vote="1,234,567")])
    ds, problems = load(path)
    assert ds.interactions["helpful_votes"].tolist() == [1234567]


def test_blank_lines_are_counted_not_bad(tmp_path):
    path = write_lines(tmp_path / "r.json", [review("U1"), b"", b"   ", review("U2")])
    ds, problems = load(path)
    assert ds.interactions["_line"].tolist() == [1, 4]
    assert problems.notes["blank lines ignored"] == 2


def test_through_registry_gives_canonical_dtypes(tmp_path):
    path = write_lines(tmp_path / "r.json", [review("U1", "I1"), review("U2", "I1", 3.0, "ok")])
    ds, problems = load_dataset(make_cfg(path))
    assert list(ds.interactions.columns) == amazon_cols()
    assert str(ds.interactions["timestamp"].dtype) == "Int64"
    assert str(ds.interactions["rating"].dtype) == "float64"
    assert len(ds.items) == 1


def amazon_cols():
    from exp3rt.data.schema import INTERACTION_COLUMNS

    return INTERACTION_COLUMNS


# ------------------------------------------------------------------------------------- bad input

BAD_BYTES = b'{"overall": 5.0, "reviewerID": "U9", "asin": "I9", "reviewText": "caf\xe9 \xff"}'
GOOD = review("U0", "I0", 4.0, "fine", 1500000000)
BAD_CASES = {
    # name: (line 2 as bytes, field named in the error, words of the reason)
    "missing user": (orjson.dumps(review(user=_DROP)), "reviewerID", "missing or empty reviewer id"),
    "empty user": (orjson.dumps(review(user="")), "reviewerID", "missing or empty reviewer id"),
    "missing item": (orjson.dumps(review(item=_DROP)), "asin", "missing or empty item id"),
    "missing rating": (orjson.dumps(review(rating=_DROP)), "overall", "missing rating"),
    "rating not a number": (orjson.dumps(review(rating="great")), "overall", "'great' is not a number"),
    "rating above scale": (orjson.dumps(review(rating=6.0)), "overall", "outside the scale [1, 5]"),
    "rating below scale": (orjson.dumps(review(rating=0)), "overall", "outside the scale [1, 5]"),
    "bad json": (b'{"overall": 5.0, "reviewerID": "U9", "asin"', None, "not valid JSON"),
    "not an object": (b'["U9", "I9", 5]', None, "not a JSON object (got list)"),
    "bad encoding": (
        BAD_BYTES,
        None,
        "bad encoding: bytes at offset {} are not valid utf-8".format(BAD_BYTES.index(b"\xe9")),  # 69
    ),
    "empty review": (orjson.dumps(review(text="  \n ")), "reviewText", "missing or empty review text"),
    "missing review": (orjson.dumps(review(text=_DROP)), "reviewText", "missing or empty review text"),
    "review not text": (orjson.dumps(review(text=42)), "reviewText", "review text is a int"),
    "bad time": (orjson.dumps(review(t="yesterday")), "unixReviewTime", "'yesterday' is not a unix time"),
    "bad vote": (orjson.dumps(review(vote="many")), "vote", "'many' is not a vote count"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_strict_names_file_line_field(tmp_path, case):
    raw, field, reason = BAD_CASES[case]
    path = write_lines(tmp_path / "reviews.json", [GOOD, raw, GOOD])
    with pytest.raises(DataError) as err:
        load(path, strict=True)
    e = err.value
    assert (Path(e.file).name, e.line, e.field) == ("reviews.json", 2, field)
    msg = str(e)
    assert "reviews.json, line 2" in msg
    assert reason in msg
    if field:
        assert f"field '{field}'" in msg


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_lenient_skips_and_counts(tmp_path, case):
    raw, field, reason = BAD_CASES[case]
    path = write_lines(tmp_path / "reviews.json.gz", [GOOD, raw, GOOD], gz=True)
    ds, problems = load(path, strict=False, variants="keep_all")
    assert ds.interactions["_line"].tolist() == [1, 3]
    assert problems.total_skipped == 1
    (kind,) = problems.skipped
    (example,) = problems.examples[kind]
    assert (Path(example["file"]).name, example["line"], example["field"]) == ("reviews.json.gz", 2, field)
    assert reason in example["reason"]


def test_lenient_counts_by_kind(tmp_path):
    lines = [GOOD, orjson.dumps(review(rating=9)), orjson.dumps(review(rating=0)), b"{", GOOD]
    path = write_lines(tmp_path / "r.json", lines)
    ds, problems = load(path, strict=False, variants="keep_all")
    assert len(ds.interactions) == 2
    assert problems.skipped == {amazon.K_RATING_SCALE: 2, amazon.K_BAD_JSON: 1}


def test_empty_review_allowed_when_not_required(tmp_path):
    path = write_lines(tmp_path / "r.json", [review("U1", text=""), review("U2", text=_DROP), GOOD])
    ds, problems = load(path, require_review=False)
    assert ds.interactions["review"].isna().tolist() == [True, True, False]
    assert problems.total_skipped == 0


def test_other_encodings_are_decoded(tmp_path):
    line = json.dumps(review(text="café crème"), ensure_ascii=False).encode("latin-1")
    path = write_lines(tmp_path / "r.json", [line])
    ds, _ = load(path, encoding="latin-1")
    assert ds.interactions["review"].tolist() == ["café crème"]
    with pytest.raises(
        DataError, match=r"r.json, line 1: bad encoding: bytes at offset \d+ are not valid utf-8"
    ):
        load(path, encoding="utf-8")


# -------------------------------------------------------------------------------------- variants


def variant_lines():
    same = dict(user="U1", text="Same words for every format.", t=1500000000)
    return [
        review(item="I1", **same),  # line 1: first copy
        review("U2", "I1", 3.0, "Other user", 1500000000),  # line 2
        review(item="I2", **same),  # line 3: copy under another variant
        review(item="I3", **same),  # line 4: copy
        review("U1", "I4", 5.0, "Same words for every format.", 1600000000),  # line 5: other time, kept
        review("U1", "I5", 5.0, "Different words.", 1500000000),  # line 6: other text, kept
    ]


def test_keep_one_drops_variant_copies_and_counts(tmp_path):
    path = write_lines(tmp_path / "r.json", variant_lines())
    ds, problems = load(path, variants="keep_one")
    assert ds.interactions["_line"].tolist() == [1, 2, 5, 6]
    assert problems.notes[amazon.VARIANT_NOTE] == 2
    assert ds.items["item_id"].tolist() == ["I1", "I4", "I5"]


def test_keep_all_keeps_every_copy(tmp_path):
    path = write_lines(tmp_path / "r.json", variant_lines())
    ds, problems = load(path, variants="keep_all")
    assert ds.interactions["_line"].tolist() == [1, 2, 3, 4, 5, 6]
    assert problems.notes[amazon.VARIANT_NOTE] == 0


def test_keep_one_finds_copies_in_flushed_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(amazon, "CHUNK_ROWS", 1)  # every block flushes: the first copy lives in Arrow
    monkeypatch.setattr(
        amazon, "iter_line_blocks", lambda p, **kw: ((i + 1, [ln]) for i, ln in enumerate(_lines(p)))
    )
    path = write_lines(tmp_path / "r.json", variant_lines())
    ds, problems = load(path, variants="keep_one")
    assert ds.interactions["_line"].tolist() == [1, 2, 5, 6]
    assert problems.notes[amazon.VARIANT_NOTE] == 2


def _lines(path):
    return Path(path).read_bytes().split(b"\n")[:-1]


def test_hash_collision_never_drops_a_distinct_review(tmp_path, monkeypatch):
    monkeypatch.setattr(amazon, "hash", lambda key: 0, raising=False)  # every key collides
    path = write_lines(tmp_path / "r.json", variant_lines())
    ds, problems = load(path, variants="keep_one")
    # every row is compared with line 1 (the only stored first copy): lines 3 and 4 equal it and are
    # dropped; lines 2, 5 and 6 differ and are kept despite the colliding hash
    assert ds.interactions["_line"].tolist() == [1, 2, 5, 6]


def test_text_less_ratings_are_not_grouped_as_variants(tmp_path):
    lines = [review("U1", "I1", text=_DROP), review("U1", "I2", text=_DROP)]
    path = write_lines(tmp_path / "r.json", lines)
    ds, problems = load(path, variants="keep_one", require_review=False)
    assert len(ds.interactions) == 2
    assert problems.notes[amazon.VARIANT_NOTE] == 0


# -------------------------------------------------------------------------------------- metadata


def meta(asin, title="A Title", description=None, category=None, **extra) -> dict:
    rec = {
        "asin": asin,
        "title": title,
        "description": description if description is not None else [],
        "category": category if category is not None else [],
        "brand": "",
        "main_cat": "Magazine Subscriptions",
        "price": "",
        "rank": [],
    }
    rec.update(extra)
    return rec


def test_metadata_cleanup(tmp_path):
    reviews = write_lines(
        tmp_path / "r.json",
        [review("U1", f"I{i}", text=f"review {i}") for i in range(1, 6)],
    )
    metas = write_lines(
        tmp_path / "meta.json.gz",
        [
            meta(
                "I1",
                '<span class="a-size-medium a-color-secondary"',
                description=["<b>Bold</b> words", "", ""],
            ),
            meta(
                "I2", "Disney &amp; Me", category=["Magazine Subscriptions", "Arts, Music &amp; Photography"]
            ),
            meta("I1", "A later duplicate row"),
            meta("I3", ' Magazines" />', description=["First<br />line", "Second &quot;para&quot;"]),
            meta("I4", "Plain", brand="Hearst", price="$12.99", rank="742 in Magazine Subscriptions ("),
            meta("I9", "Not rated by anyone"),
            meta("I2", "dup again"),
            meta("I4", "dup", price=".a-box-inner{background-color:#fff}"),
        ],
        gz=True,
    )
    ds, problems = load(reviews, meta_path=str(metas))
    items = ds.items.set_index("item_id")
    assert items.index.tolist() == ["I1", "I2", "I3", "I4", "I5"]  # only rated items, first-seen order
    assert items.loc["I1", "title"] is None or items["title"].isna()["I1"]
    assert items.loc["I1", "description"] == "Bold words"
    assert items.loc["I2", "title"] == "Disney & Me"
    assert items.loc["I2", "categories"] == ["Magazine Subscriptions", "Arts, Music & Photography"]
    assert items["title"].isna()["I3"]
    assert items.loc["I3", "description"] == 'First line\nSecond "para"'
    assert items.loc["I4", "title"] == "Plain"
    assert json.loads(items.loc["I4", "extra"]) == {
        "brand": "Hearst",
        "main_cat": "Magazine Subscriptions",
        "price": "$12.99",
        "rank": "742 in Magazine Subscriptions (",
    }
    assert items["title"].isna()["I5"] and items["description"].isna()["I5"]
    assert items.loc["I5", "categories"] == []
    assert problems.notes["metadata: duplicate asin rows ignored (first kept)"] == 3
    assert problems.notes["metadata: title was only HTML debris, set to null"] == 2
    assert problems.notes["items without metadata (title/description null)"] == 1
    assert problems.notes["metadata: price was not a price (page debris), dropped"] == 0


def test_metadata_price_debris_dropped(tmp_path):
    reviews = write_lines(tmp_path / "r.json", [review("U1", "I1")])
    metas = write_lines(tmp_path / "m.json", [meta("I1", price=".a-box-inner{background-color:#fff}")])
    ds, problems = load(reviews, meta_path=str(metas))
    assert json.loads(ds.items.loc[0, "extra"]) == {"main_cat": "Magazine Subscriptions"}
    assert problems.notes["metadata: price was not a price (page debris), dropped"] == 1


def test_bad_metadata_line(tmp_path):
    reviews = write_lines(tmp_path / "r.json", [review("U1", "I1")])
    metas = write_lines(tmp_path / "m.json", [meta("I1"), b'{"asin": ', meta("")])
    with pytest.raises(DataError, match=r"m.json, line 2: not valid JSON"):
        load(reviews, meta_path=str(metas))
    ds, problems = load(reviews, meta_path=str(metas), strict=False)
    assert problems.skipped == {"metadata: " + amazon.K_BAD_JSON: 1, "metadata: " + amazon.K_NO_ITEM: 1}
    assert problems.examples["metadata: " + amazon.K_NO_ITEM][0]["line"] == 3
    assert ds.items.loc[0, "title"] == "A Title"


@pytest.mark.parametrize(
    "raw, clean",
    [
        ('<span class="a-size-medium a-color-secondary"', None),
        (' Magazines" />', None),
        ("Growth Chart &ndash; D&eacute;cor", "Growth Chart – Décor"),
        ("<i>Maximum PC</i> brings   news", "Maximum PC brings news"),
        ("   ", None),
        (None, None),
        ("5 > 4 and 3 < 4", "5 > 4 and 3 < 4"),
    ],
)
def test_clean_html(raw, clean):
    assert clean_html(raw) == clean


# ---------------------------------------------------------------------------------- real sample


@pytest.mark.shared_data
def test_real_file_strict_stops_at_the_empty_review(shared_data):
    path = shared_data / "amazon-2018" / "Magazine_Subscriptions_5.json.gz"
    with gzip.open(path, "rb") as fh:
        assert sum(1 for _ in fh) == 2375
    with pytest.raises(DataError) as err:
        load(path, strict=True)
    e = err.value
    assert (Path(e.file).name, e.line, e.field) == ("Magazine_Subscriptions_5.json.gz", 429, "reviewText")
    assert "Magazine_Subscriptions_5.json.gz, line 429, field 'reviewText'" in str(e)


@pytest.mark.shared_data
def test_real_file_lenient_keep_one(shared_data):
    d = shared_data / "amazon-2018"
    ds, problems = load(
        d / "Magazine_Subscriptions_5.json.gz",
        strict=False,
        variants="keep_one",
        meta_path=str(d / "meta_Magazine_Subscriptions.json.gz"),
    )
    inter = ds.interactions
    # 2,375 lines - 1 empty review (line 429, a review with no copies) = 2,374 usable lines holding
    # 1,971 distinct (user, text, time) reviews; of the other 403 lines, 359 are variant copies (another
    # asin) and 44 repeat an earlier line's reviewer, asin, rating, text and time (exact duplicates)
    assert len(inter) == 1971
    assert problems.total_skipped == 1
    assert problems.skipped == {amazon.K_NO_REVIEW: 1}
    assert problems.notes[amazon.VARIANT_NOTE] == 359
    assert problems.notes[amazon.EXACT_DUPLICATE_NOTE] == 44
    # every user keeps a review; 7 of the 157 asins were only ever variant copies
    assert inter["user_id"].nunique() == 348
    assert inter["item_id"].nunique() == 150
    # 23 (user, item) pairs still repeat (same reviewer, same asin, different text or time): they
    # are left for the shared duplicate policy
    assert inter.duplicated(["user_id", "item_id"]).sum() == 23
    assert inter["rating"].value_counts().sort_index().tolist() == [
        87,
        100,
        204,
        320,
        1260,
    ]  # checked with a plain json loop
    items = ds.items
    assert len(items) == 150
    assert problems.notes["metadata: duplicate asin rows ignored (first kept)"] == 1065
    assert problems.notes["metadata: title was only HTML debris, set to null"] == 142
    assert problems.notes["items without metadata (title/description null)"] == 5
    assert int(items["title"].notna().sum()) == 3
    assert int(items["description"].notna().sum()) == 139  # 145 with metadata, 6 of them with none
    assert not items["title"].dropna().str.contains("<|&amp;|/>", regex=True).any()


@pytest.mark.shared_data
def test_real_file_lenient_keep_all(shared_data):
    ds, problems = load(
        shared_data / "amazon-2018" / "Magazine_Subscriptions_5.json.gz", strict=False, variants="keep_all"
    )
    inter = ds.interactions
    assert len(inter) == 2374
    assert (inter["user_id"].nunique(), inter["item_id"].nunique()) == (348, 157)
    assert inter["helpful_votes"].sum() == _votes_in_file(shared_data)


def _votes_in_file(shared_data) -> int:
    total = 0
    with gzip.open(shared_data / "amazon-2018" / "Magazine_Subscriptions_5.json.gz", "rb") as fh:
        for line in fh:
            rec = orjson.loads(line)
            if rec.get("reviewText"):
                total += int(rec.get("vote", "0").replace(",", ""))
    return total


@pytest.mark.shared_data
def test_shipped_magazine_config_loads(shared_data):
    raw = dataset_yaml("amazon_magazine")
    root = OmegaConf.create({"paths": {"shared_data": str(shared_data)}, "dataset": raw})
    cfg = validate(root).dataset
    assert cfg.strict is False
    ds, problems = load_dataset(cfg)
    assert problems.total_skipped == 1
    # the shared keep_first duplicate policy then drops the 23 repeated (user, item) rows
    assert len(ds.interactions) == 1971 - 23 == 1948
    assert problems.notes["duplicate (user, item) rows resolved by policy keep_first"] == 23
    assert (ds.scale.min, ds.scale.max) == (1.0, 5.0)
