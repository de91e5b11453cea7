"""Generic tabular loader: formats, column mapping, line numbers, every bad-input case, items table."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import dataset_yaml
from omegaconf import OmegaConf

from exp3rt.config import ConfigError, validate
from exp3rt.data.loaders import load_dataset
from exp3rt.data.problems import DataError, InputProblems
from exp3rt.data.tabular import load_tabular

REPO = Path(__file__).resolve().parents[1]


def make_cfg(path, **over):
    ds = {"name": "tab", "loader": "tabular", "path": str(path), "domain": "movie", "require_review": False}
    ds.update(over)
    return validate(OmegaConf.create({"dataset": ds})).dataset


def load(path, strict=True, **over):
    problems = InputProblems(strict=strict)
    return load_tabular(make_cfg(path, strict=strict, **over), problems), problems


def write(path: Path, text: str | bytes, gz: bool = False) -> Path:
    data = text.encode() if isinstance(text, str) else text
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


# -------------------------------------------------------------------------------------- formats

CSV = (
    "uid,iid,stars,review,summary,timestamp,helpful_votes\n"
    '1,10,5,Great film,Wow,881250949,"1,234"\n'
    '2,10,3,"Two lines\nof review, with a comma",,881250950,2\n'
    "1,11,4.5,Fine,,,\n"
)


@pytest.mark.parametrize("gz", [False, True])
def test_csv_mapping_defaults_and_line_numbers(tmp_path, gz):
    path = write(tmp_path / ("r.csv.gz" if gz else "r.csv"), CSV, gz=gz)
    # 4.5 is a half star: the scale must say so (a step-1 scale rejects it, see test_data_accounting.py)
    scale = {"min": 1, "max": 5, "step": 0.5}
    ds, problems = load(path, fields={"user_id": "uid", "item_id": "iid", "rating": "stars"}, scale=scale)
    inter = ds.interactions
    assert inter["user_id"].tolist() == ["1", "2", "1"]  # ids become strings
    assert inter["item_id"].tolist() == ["10", "10", "11"]
    assert inter["rating"].tolist() == [5.0, 3.0, 4.5]
    assert inter["review"].tolist() == ["Great film", "Two lines\nof review, with a comma", "Fine"]
    assert inter["summary"].isna().tolist() == [False, True, True]  # same-named columns by default
    assert inter["timestamp"].isna().tolist() == [False, False, True]
    assert inter["helpful_votes"].tolist() == [1234, 2, 0]
    assert inter["_line"].tolist() == [2, 3, 5]  # physical lines, header counted; a record = its first line
    assert problems.notes["helpful_votes: thousands separator stripped (e.g. '1,234' -> 1234)"] == 1
    assert ds.items["item_id"].tolist() == ["10", "11"]


def test_recbole_inter_with_shipped_config(tmp_path):
    path = write(
        tmp_path / "mini.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n186\t302\t3\t891717742.0\n",
    )
    raw = dataset_yaml("ml100k")
    raw.path = str(path)
    cfg = validate(OmegaConf.create({"dataset": raw})).dataset
    ds, problems = load_dataset(cfg)
    inter = ds.interactions
    assert inter["user_id"].tolist() == ["196", "186"]
    assert inter["rating"].tolist() == [3.0, 3.0]
    assert inter["timestamp"].tolist() == [881250949, 891717742]
    assert inter["review"].isna().all()
    assert (ds.name, ds.domain) == ("ml100k", "movie")


def test_headerless_with_column_names_and_separator(tmp_path):
    path = write(tmp_path / "ratings.dat", "7;70;2;880000000\n8;80;1;880000001\n")
    ds, _ = load(
        path,
        format="csv",
        separator=";",
        header=False,
        column_names=["user_id", "item_id", "rating", "timestamp"],
    )
    assert ds.interactions["_line"].tolist() == [1, 2]
    assert ds.interactions["item_id"].tolist() == ["70", "80"]


def test_headerless_needs_column_names(tmp_path):
    path = write(tmp_path / "r.csv", "1,2,3\n")
    with pytest.raises(ConfigError, match="dataset.column_names"):
        load(path, header=False)


def test_jsonl(tmp_path):
    lines = [
        {"user": 1, "item": "a", "score": 4, "review": "nice"},
        {"user": 2, "item": "b", "score": "2.0", "review": "meh", "timestamp": 5},
    ]
    path = write(tmp_path / "r.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    ds, _ = load(path, fields={"user_id": "user", "item_id": "item", "rating": "score"}, require_review=True)
    inter = ds.interactions
    assert inter["user_id"].tolist() == ["1", "2"]
    assert inter["rating"].tolist() == [4.0, 2.0]
    assert inter["review"].tolist() == ["nice", "meh"]
    assert inter["timestamp"].isna().tolist() == [True, False]


def test_parquet_rows_are_numbered_from_one(tmp_path):
    table = pa.table(
        {"user_id": [1, 2, 3], "item_id": [10.0, 20.0, 30.0], "rating": [5.0, 1.0, 9.0], "ts": [1, 2, None]}
    )
    path = tmp_path / "r.parquet"
    pq.write_table(table, path)
    with pytest.raises(DataError) as err:
        load(path, fields={"timestamp": "ts"})
    assert (err.value.line, err.value.field) == (3, "rating")
    ds, problems = load(path, strict=False, fields={"timestamp": "ts"})
    assert ds.interactions["item_id"].tolist() == ["10", "20"]  # integral float ids -> "10"
    assert ds.interactions["_line"].tolist() == [1, 2]
    assert problems.total_skipped == 1


def test_format_detection(tmp_path):
    path = write(tmp_path / "r.txt", "user_id,item_id,rating\n1,2,3\n")
    with pytest.raises(
        ConfigError, match=r"cannot tell the format .* set it to one of csv, tsv, jsonl, parquet"
    ):
        load(path)
    ds, _ = load(path, format="csv")
    assert len(ds.interactions) == 1
    with pytest.raises(ConfigError, match="'dataset.format': Invalid value 'xlsx', expected one of"):
        load(path, format="xlsx")


# ------------------------------------------------------------------------------------ bad input

HEADER = "user_id,item_id,rating,review\n"
GOOD = "u0,i0,4,fine\n"
BAD_CSV = {
    # name: (line 3 of the file, field named, words of the reason)
    "missing user": (",i1,4,ok\n", "user_id", "missing or empty user id"),
    "missing item": ("u1, ,4,ok\n", "item_id", "missing or empty item id"),
    "missing rating": ("u1,i1,,ok\n", "rating", "missing rating"),
    "rating not a number": ("u1,i1,five,ok\n", "rating", "rating 'five' is not a number"),
    "rating nan": ("u1,i1,nan,ok\n", "rating", "rating 'nan' is not a number"),
    "rating above scale": ("u1,i1,5.5,ok\n", "rating", "rating 5.5 is outside the scale [1, 5]"),
    "too few columns": ("u1,i1,4\n", None, "expected 4 columns, found 3"),
    "too many columns": ("u1,i1,4,ok,extra\n", None, "expected 4 columns, found 5"),
    "bad encoding": (b"u1,i1,4,caf\xe9\n", None, "bad encoding: bytes at offset 11 are not valid utf-8"),
    "empty review": ("u1,i1,4,   \n", "review", "missing or empty review text"),
}


def _bad_file(tmp_path, case, name="r.csv") -> Path:
    line = BAD_CSV[case][0]
    body = (
        HEADER.encode() + GOOD.encode() + (line if isinstance(line, bytes) else line.encode()) + GOOD.encode()
    )
    return write(tmp_path / name, body)


@pytest.mark.parametrize("case", list(BAD_CSV))
def test_bad_csv_strict(tmp_path, case):
    _, field, reason = BAD_CSV[case]
    path = _bad_file(tmp_path, case)
    with pytest.raises(DataError) as err:
        load(path, require_review=True)
    e = err.value
    assert (Path(e.file).name, e.line, e.field) == ("r.csv", 3, field)
    assert "r.csv, line 3" in str(e) and reason in str(e)
    if field:
        assert f"field '{field}'" in str(e)


@pytest.mark.parametrize("case", list(BAD_CSV))
def test_bad_csv_lenient(tmp_path, case):
    _, field, reason = BAD_CSV[case]
    path = _bad_file(tmp_path, case)
    ds, problems = load(path, strict=False, require_review=True)
    assert ds.interactions["_line"].tolist() == [2, 4]
    assert problems.total_skipped == 1
    (kind,) = problems.skipped
    (example,) = problems.examples[kind]
    assert (example["line"], example["field"]) == (3, field)
    assert reason in example["reason"]


def test_bad_lines_keep_physical_numbering_after_multiline_records(tmp_path):
    text = HEADER + 'u1,i1,4,"a\nb\nc"\n' + "u2,i2,9,x\n"  # the bad rating is on physical line 5
    path = write(tmp_path / "r.csv", text)
    with pytest.raises(DataError, match=r"r.csv, line 5, field 'rating'"):
        load(path)


def test_empty_review_is_fine_for_rating_only_data(tmp_path):
    path = _bad_file(tmp_path, "empty review")
    ds, problems = load(path, require_review=False)
    assert ds.interactions["review"].isna().tolist() == [False, True, False]
    assert problems.total_skipped == 0


BAD_JSONL = {
    "bad json": (b'{"user_id": "u1", "item_id": ', None, "not valid JSON"),
    "not an object": (b"[1, 2, 3]", None, "not a JSON object (got list)"),
    "bad encoding": (
        b'{"user_id": "u\xff", "item_id": "i", "rating": 3}',
        None,
        "bad encoding: bytes at offset 14",
    ),
    "missing user": (b'{"item_id": "i", "rating": 3}', "user_id", "missing or empty user id"),
    "missing rating": (b'{"user_id": "u", "item_id": "i", "rating": null}', "rating", "missing rating"),
    "rating is bool": (b'{"user_id": "u", "item_id": "i", "rating": true}', "rating", "True is not a number"),
    "below scale": (b'{"user_id": "u", "item_id": "i", "rating": 0}', "rating", "outside the scale"),
    "bad time": (
        b'{"user_id": "u", "item_id": "i", "rating": 3, "timestamp": "noon"}',
        "timestamp",
        "not a unix",
    ),
}


@pytest.mark.parametrize("case", list(BAD_JSONL))
def test_bad_jsonl_strict_and_lenient(tmp_path, case):
    raw, field, reason = BAD_JSONL[case]
    good = b'{"user_id": "u", "item_id": "i", "rating": 3}\n'
    path = write(tmp_path / "r.jsonl.gz", good + raw + b"\n" + good, gz=True)
    with pytest.raises(DataError) as err:
        load(path)
    assert (Path(err.value.file).name, err.value.line, err.value.field) == ("r.jsonl.gz", 2, field)
    assert reason in str(err.value)
    ds, problems = load(path, strict=False)
    assert ds.interactions["_line"].tolist() == [1, 3]
    assert problems.total_skipped == 1


def test_mapped_column_missing_from_header_always_raises(tmp_path):
    path = write(tmp_path / "r.csv", "uid,iid,stars\n1,2,3\n")
    for strict in (True, False):
        with pytest.raises(
            DataError, match=r"r.csv, line 1, field 'user': column not found .*\['uid', 'iid', 'stars'\]"
        ):
            load(path, strict=strict, fields={"user_id": "user", "item_id": "iid", "rating": "stars"})
    with pytest.raises(DataError, match=r"field 'user_id': column not found for canonical field 'user_id'"):
        load(path, fields={"item_id": "iid", "rating": "stars"})


def test_unknown_canonical_field_is_a_config_error(tmp_path):
    path = write(tmp_path / "r.csv", "user_id,item_id,rating\n1,2,3\n")
    with pytest.raises(ConfigError, match=r"dataset.fields.*unknown canonical field\(s\) \['stars'\]"):
        load(path, fields={"stars": "rating"})


# ---------------------------------------------------------------------------------------- items


def test_items_table(tmp_path):
    path = write(tmp_path / "r.csv", "user_id,item_id,rating\n1,a,3\n1,b,4\n2,c,5\n")
    meta = write(
        tmp_path / "items.csv",
        "id,name,genres,year\n"
        "a,Alpha,Action|Drama,1999\n"
        "b,Beta,,2001\n"
        "a,Alpha again,Comedy,2000\n"
        "z,Zeta,Horror,1980\n",
    )
    ds, problems = load(
        path, meta_path=str(meta), item_fields={"item_id": "id", "title": "name", "categories": "genres"}
    )
    items = ds.items.set_index("item_id")
    assert items.index.tolist() == ["a", "b", "c"]
    assert items.loc["a", "title"] == "Alpha"
    assert items.loc["a", "categories"] == ["Action", "Drama"]
    assert json.loads(items.loc["a", "extra"]) == {"year": "1999"}
    assert items.loc["b", "categories"] == []
    assert items["title"].isna()["c"]
    assert problems.notes["items.csv: duplicate item rows ignored (first kept)"] == 1
    assert problems.notes["items.csv: items without interactions not kept"] == 1
    assert problems.notes["items without metadata (title/description null)"] == 1


def test_items_jsonl_extra_and_bad_row(tmp_path):
    path = write(tmp_path / "r.csv", "user_id,item_id,rating\n1,a,3\n")
    meta = write(
        tmp_path / "items.jsonl",
        '{"item_id": "a", "title": "Alpha", "categories": ["X", "Y"], "brand": "B", "price": '
        'null}\n{"title": "no id"}\n',
    )
    with pytest.raises(DataError, match=r"items.jsonl, line 2, field 'item_id': missing or empty item id"):
        load(path, meta_path=str(meta))
    ds, problems = load(path, strict=False, meta_path=str(meta))
    assert ds.items.loc[0, "categories"] == ["X", "Y"]
    assert json.loads(ds.items.loc[0, "extra"]) == {"brand": "B"}
    assert problems.total_skipped == 1


# --------------------------------------------------------------------------------- real ml-100k


def test_real_ml100k_if_given():
    inter_path = os.environ.get("EXP3RT_ML100K")
    if not inter_path or not Path(inter_path).is_file():
        pytest.skip("set EXP3RT_ML100K to RecBole's ml-100k.inter to run this test")
    raw = dataset_yaml("ml100k")
    raw.path = inter_path
    item_path = Path(inter_path).with_suffix(".item")
    if item_path.is_file():
        raw.meta_path = str(item_path)
    ds, problems = load_dataset(validate(OmegaConf.create({"dataset": raw})).dataset)
    inter = ds.interactions
    assert len(inter) == 100_000
    assert (inter["user_id"].nunique(), inter["item_id"].nunique()) == (943, 1682)
    assert round(float(inter["rating"].mean()), 5) == 3.52986
    assert problems.total_skipped == 0
    if item_path.is_file():
        assert ds.items.set_index("item_id").loc["1", "title"] == "Toy Story"
