"""Issue 16's data items: an empty dataset is one sentence, damaged inputs name file and line, every line
read is accounted for (a runaway CSV quote costs one line, not the rest of the file), release records are
named by their physical line, exact duplicate Amazon lines are not called variants, and ratings off the
scale's steps are bad input at load time."""

from __future__ import annotations

import gzip
import json
import logging
import re
import time
import zlib
from pathlib import Path

import orjson
import pytest
from omegaconf import OmegaConf

from exp3rt.cli.common import fail_cleanly
from exp3rt.config import ConfigError, validate
from exp3rt.data.loaders import load_dataset
from exp3rt.data.prepare import prepare_dataset
from exp3rt.data.problems import DataError, InputProblems
from exp3rt.data.release import read_rating_file
from exp3rt.data.schema import RatingScale


def cfg(**ds):
    base = {"name": "x", "domain": "movie", "require_review": False}
    base.update(ds)
    return validate(OmegaConf.create({"dataset": base})).dataset


def review(user="U1", item="I1", rating=5.0, text="Great read.", t=1500000000) -> dict:
    return {"reviewerID": user, "asin": item, "overall": rating, "reviewText": text, "unixReviewTime": t}


def jsonl(path: Path, records: list) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


PERSONA = "[Like]\n- Twists\n\n[Dislike]\n- None\n\n[Average Rating]\n7.0"
SYNOPSIS = "[Like]\n- Dialogue\n\n[Dislike]\n- Length\n\n[Average Rating]\n8.0"
DESC = 'Title: A "Film", [1999]\nGenres: Drama, {Crime}\nPlot: Commas, brackets ] and \\ backslashes.'


def release_rec(user="u1", item="i1", score="9") -> dict:
    return {
        "user_id": user,
        "item_id": item,
        "user_persona": PERSONA,
        "item_synopsis": SYNOPSIS,
        "item_description": DESC,
        "score": score,
    }


def start_line_of(path: Path, user: str) -> int:
    """Independent oracle: the physical line of the "{" that opens the record of ``user`` (indent=2)."""
    lines = path.read_text().splitlines()
    at = next(n for n, text in enumerate(lines) if text.strip() == f'"user_id": "{user}",')
    return at  # the "{" is the line before; enumerate is 0-based, lines are 1-based


# ----------------------------------------------------------------------------------- 12: no records


def _all_bad_csv(path: Path) -> Path:
    rows = ["user_id,item_id,rating"]
    rows += [f"u{i},i{i},{'x' if i < 40 else ''}" for i in range(60)]  # 40 not a number, 20 missing
    path.write_text("\n".join(rows) + "\n")
    return path


def _empty_cases(tmp: Path):
    (tmp / "empty.json").write_bytes(b"")
    (tmp / "empty.jsonl").write_bytes(b"")
    (tmp / "header.csv").write_text("user_id,item_id,rating\n")
    (tmp / "empty.csv").write_bytes(b"")
    rel = tmp / "rel"
    rel.mkdir()
    (rel / "test.json").write_text("[]")
    return {
        "amazon empty": (
            cfg(loader="amazon2018", path=str(tmp / "empty.json")),
            f"dataset 'x': no usable interactions in {tmp / 'empty.json'}: 0 lines read, 0 kept, 0 skipped",
        ),
        "jsonl empty": (
            cfg(loader="tabular", path=str(tmp / "empty.jsonl")),
            f"dataset 'x': no usable interactions in {tmp / 'empty.jsonl'}: 0 lines read, 0 kept, 0 skipped",
        ),
        "csv empty": (
            cfg(loader="tabular", path=str(tmp / "empty.csv")),
            f"dataset 'x': no usable interactions in {tmp / 'empty.csv'}: 0 lines read, 0 kept, 0 skipped",
        ),
        "csv header only": (
            cfg(loader="tabular", path=str(tmp / "header.csv")),
            f"dataset 'x': no usable interactions in {tmp / 'header.csv'}: 1 line read, 0 kept, 0 skipped, "
            "1 ignored (header 1)",
        ),
        "release []": (
            cfg(loader="exp3rt_release", path=str(rel), release={"rating_test": "test.json"}),
            f"dataset 'x': no usable interactions in {rel / 'test.json'}: 0 records read, 0 kept, 0 skipped",
        ),
        "lenient, every line bad": (
            cfg(loader="tabular", path=str(_all_bad_csv(tmp / "bad.csv")), strict=False),
            f"dataset 'x': no usable interactions in {tmp / 'bad.csv'}: 61 lines read, 0 kept, 60 skipped "
            "(rating: not a number 40, rating: missing 20), 1 ignored (header 1)",
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["amazon empty", "jsonl empty", "csv empty", "csv header only", "release []", "lenient, every line bad"],
)
def test_no_usable_interactions_is_one_sentence(tmp_path, case, capsys):
    config, sentence = _empty_cases(tmp_path)[case]
    with pytest.raises(DataError) as ei:
        load_dataset(config)
    assert str(ei.value) == sentence
    # the command-line wrapper prints it as one line, without a traceback, and exits 2
    with pytest.raises(SystemExit) as exit_info, fail_cleanly(logging.getLogger("test")):
        prepare_dataset(config, tmp_path / "data")
    assert (
        exit_info.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1] == f"error: {sentence}"
    )


def test_kcore_that_removes_everything_says_so_and_its_advice_works(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user_id,item_id,rating\nu1,i1,4\nu2,i2,5\n")
    with pytest.raises(DataError) as ei:
        load_dataset(cfg(loader="tabular", path=str(path), kcore={"user": 2, "item": 2}))
    message = str(ei.value)
    assert message == (
        "dataset 'x': the k-core filter (dataset.kcore.user=2, dataset.kcore.item=2) removed all 2 "
        "interactions; set dataset.kcore.user=0 dataset.kcore.item=0 to keep them"
    )
    advice = dict(kv.split("=") for kv in re.search(r"; set (.*) to keep them", message).group(1).split())
    fixed = OmegaConf.to_container(cfg(loader="tabular", path=str(path)))
    fixed["kcore"] = {k.split(".")[-1]: int(v) for k, v in advice.items()}
    ds, _ = load_dataset(validate(OmegaConf.create({"dataset": fixed})).dataset)
    assert len(ds.interactions) == 2


# ------------------------------------------------------------------------------ 13: damaged inputs


def _truncated_gz(path: Path, data: bytes) -> int:
    """Write the first half of ``data`` gzipped; return how many complete lines it still holds."""
    packed = gzip.compress(data)
    cut = packed[: len(packed) // 2]
    path.write_bytes(cut)
    readable = zlib.decompressobj(31).decompress(cut)
    return readable.count(b"\n")


def test_truncated_gzip_names_the_file_and_line(tmp_path):
    records = [review(f"u{i}", text=f"review number {i} " + "x" * 200) for i in range(3000)]
    path = tmp_path / "reviews.json.gz"
    complete = _truncated_gz(path, b"".join(orjson.dumps(r) + b"\n" for r in records))
    assert 0 < complete < 3000
    with pytest.raises(DataError) as ei:
        load_dataset(cfg(loader="amazon2018", path=str(path)))
    e = ei.value
    assert (e.file, e.line) == (str(path), complete + 1)
    assert "gzip file ends early or is corrupt" in str(e) and f"line {complete + 1} is cut off" in str(e)
    # lenient: every complete line before the damage is kept, the damage is counted
    ds, problems = load_dataset(cfg(loader="amazon2018", path=str(path), strict=False))
    assert len(ds.interactions) == complete
    assert problems.skipped == {"gzip file truncated or corrupt": 1}


def test_truncated_gzip_csv(tmp_path):
    rows = "user_id,item_id,rating,review\n" + "".join(
        f"u{i},i{i},{1 + i % 5},{'y' * 300}\n" for i in range(3000)
    )
    path = tmp_path / "r.csv.gz"
    complete = _truncated_gz(path, rows.encode())
    with pytest.raises(DataError, match=rf"r\.csv\.gz, line {complete + 1}: the gzip file ends early"):
        load_dataset(cfg(loader="tabular", path=str(path)))
    ds, problems = load_dataset(cfg(loader="tabular", path=str(path), strict=False))
    assert len(ds.interactions) == complete - 1  # the header is one of the complete lines


@pytest.mark.parametrize("loader", ["tabular", "amazon2018"])
def test_a_folder_as_dataset_path_is_a_config_error_whose_advice_works(tmp_path, loader):
    folder = tmp_path / "data"
    folder.mkdir()
    if loader == "tabular":
        (folder / "ratings.csv").write_text("user_id,item_id,rating\nu1,i1,4\n")
    else:
        jsonl(folder / "reviews.json", [review()])
    for call in (lambda c: load_dataset(c), lambda c: prepare_dataset(c, tmp_path / "prepared")):
        with pytest.raises(ConfigError) as ei:
            call(cfg(loader=loader, path=str(folder)))
        message = str(ei.value)
        assert f"config key 'dataset.path' names the folder {folder}" in message
        suggested = re.search(r"pass dataset\.path=(\S+)", message).group(1)
        ds, _ = load_dataset(cfg(loader=loader, path=suggested))
        assert len(ds.interactions) == 1


def test_release_errors_name_the_physical_line_where_the_record_starts(tmp_path):
    records = [release_rec(f"u{i}", f"i{i}") for i in range(1, 11)]
    records[6]["score"] = "eleven"  # record 7
    path = tmp_path / "rating_test.json"
    path.write_text(json.dumps(records, indent=2))
    line = start_line_of(path, "u7")
    assert line == 50  # far from "7": a record index would be wrong
    with pytest.raises(DataError) as ei:
        read_rating_file(path, RatingScale(1, 10), InputProblems())
    assert ei.value.line == line
    assert f"rating_test.json, line {line}, field 'score': record 7:" in str(ei.value)
    df = read_rating_file(path, RatingScale(1, 10), p := InputProblems(strict=False))
    assert df["_line"].tolist() == [start_line_of(path, f"u{i}") for i in range(1, 11) if i != 7]
    assert p.examples["score: not a number"][0]["line"] == line


def test_record_start_lines_are_exact_and_fast_on_2000_records(tmp_path):
    # strings holding commas, brackets, braces, escaped quotes and backslashes; records in mixed layouts
    records = []
    for i in range(2000):
        r = release_rec(f"u{i}", f"i{i}", str(1 + i % 10))
        r["item_description"] = DESC + f' \\"{i}\\" ,[{{' + "\n" * (i % 3)
        records.append(r)
    parts = [json.dumps(r, indent=2 if i % 2 else None) for i, r in enumerate(records)]
    text = (
        "["
        + "".join(
            ("\n" if i % 3 else " ") + p + ("," if i < len(parts) - 1 else "") for i, p in enumerate(parts)
        )
        + "\n]"
    )
    path = tmp_path / "big.json"
    path.write_text(text)
    # oracle: the stdlib decoder's own positions
    decoder, expected, pos = json.JSONDecoder(), [], text.index("[") + 1
    while True:
        while text[pos] in " \n,":
            pos += 1
        if text[pos] == "]":
            break
        expected.append(text.count("\n", 0, pos) + 1)
        _, pos = decoder.raw_decode(text, pos)
    start = time.perf_counter()
    df = read_rating_file(path, RatingScale(1, 10), InputProblems())
    elapsed = time.perf_counter() - start
    assert len(df) == 2000 and df["_line"].tolist() == expected
    assert elapsed < 10  # a regex pass, not a parse per record (about 0.1 s here)


def test_invalid_utf8_in_a_release_file_is_reported_where_it_is(tmp_path):
    path = tmp_path / "rating_test.json"
    text = json.dumps([release_rec("u1"), release_rec("u2")], indent=2).encode()
    lines = text.split(b"\n")
    assert lines[4].startswith(b'    "user_persona": "')
    lines[4] = lines[4][:11] + b"\xff" + lines[4][11:]  # line 5, column 12 (1-based)
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError) as ei:
        read_rating_file(path, RatingScale(1, 10), InputProblems())
    assert ei.value.line == 5
    assert "byte 0xff at line 5 column 12 is not valid UTF-8" in str(ei.value)


def test_exact_duplicate_amazon_lines_are_not_called_variant_copies(tmp_path):
    a = review("U1", "I1", text="Same words.")
    lines = [
        a,
        a,  # line 2: the same line again
        review("U1", "I2", text="Same words."),  # line 3: a variant copy (another asin)
        review("U1", "I2", text="Same words."),  # line 4: the variant copy again: an exact duplicate too
        review("U2", "I1"),
    ]
    path = jsonl(tmp_path / "r.json", lines)
    ds, problems = load_dataset(cfg(loader="amazon2018", path=str(path), require_review=True))
    exact = [k for k in problems.notes if k.startswith("exact duplicate")]
    variant = [k for k in problems.notes if k.startswith("variant copies")]
    assert len(exact) == 1 and problems.notes[exact[0]] == 2
    assert [ex["line"] for ex in problems.note_examples[exact[0]]] == [2, 4]
    assert len(variant) == 1 and problems.notes[variant[0]] == 1
    assert ds.interactions["user_id"].tolist() == ["U1", "U2"]


# --------------------------------------------------------------------- 14: every line accounted for


def _csv_with_stray_quotes(path: Path, quote_lines: list[int]) -> Path:
    rows = ["user_id,item_id,rating"] + [f"u{i},i{i},{1 + i % 5}" for i in range(2, 62)]  # lines 2..61
    for line in quote_lines:
        u = line
        rows[line - 1] = f'u{u},"i{u},3'  # an opening quote that never closes on its line
    path.write_text("\n".join(rows) + "\n")
    return path


def test_an_unclosed_quote_costs_its_line_not_the_rest_of_the_file(tmp_path):
    path = _csv_with_stray_quotes(tmp_path / "r.csv", [6])
    with pytest.raises(DataError) as ei:
        load_dataset(cfg(loader="tabular", path=str(path)))
    assert ei.value.line == 6
    assert "unclosed quote: the record starting on line 6 runs over lines 6-61" in str(ei.value)
    ds, problems = load_dataset(cfg(loader="tabular", path=str(path), strict=False))
    assert len(ds.interactions) == 59  # 60 data lines, line 6 skipped
    assert "u6" not in set(ds.interactions["user_id"]) and "u61" in set(ds.interactions["user_id"])
    (kind,) = problems.skipped
    assert kind.startswith("unclosed quote") and problems.skipped[kind] == 1
    assert problems.examples[kind][0]["line"] == 6


def test_two_stray_quotes_and_a_runaway_that_has_the_right_width(tmp_path):
    path = _csv_with_stray_quotes(tmp_path / "r.csv", [6, 30])
    ds, problems = load_dataset(cfg(loader="tabular", path=str(path), strict=False))
    assert len(ds.interactions) == 58
    assert [ex["line"] for k in problems.skipped for ex in problems.examples[k]] == [6, 30]
    # a quote that closes on a later line can give a record of the right width: the line breaks in its
    # item id give it away
    rows = ["user_id,item_id,rating", "u1,i1,4", 'u2,"i2,3', "u3,i3,4", 'u4,i4",5', "u5,i5,2"]
    (tmp_path / "w.csv").write_text("\n".join(rows) + "\n")
    ds, problems = load_dataset(cfg(loader="tabular", path=str(tmp_path / "w.csv"), strict=False))
    assert ds.interactions["user_id"].tolist() == ["u1", "u3", "u4", "u5"]
    assert problems.total_skipped == 1


def test_the_data_report_accounts_for_every_line(tmp_path):
    src = tmp_path / "r.csv"
    rows = ["user_id,item_id,rating,review", "", 'u1,i1,4,"two\nlines"']  # lines 1, 2, 3-4
    rows += [f"u{i},i{i},4,ok" for i in range(2, 60)]  # lines 5-62
    rows += ['u60,"i60,4,ok']  # line 63: a stray quote
    rows += [f"u{i},i{i},4,ok" for i in range(61, 71)]  # lines 64-73
    rows += ["u71,i71,x,ok"]  # line 74: a bad rating
    rows += [f"u{i},i{i},4,ok" for i in range(72, 80)]  # lines 75-82
    src.write_text("\n".join(rows) + "\n")
    assert src.read_text().count("\n") == 82
    prepared = prepare_dataset(cfg(loader="tabular", path=str(src), strict=False), tmp_path / "data")
    report = json.loads((prepared.directory / "data_report.json").read_text())
    acc = report["inputs"][str(src)]
    assert acc == {
        "unit": "lines",
        "read": 82,
        "kept": 78,  # the quoted record's two lines + 58 + 10 + 8
        "ignored": {"header": 1, "blank lines": 1},
        "skipped": 2,
        "skipped_by_reason": {
            "unclosed quote (the line is skipped, the lines after it are read again)": 1,
            "rating: not a number": 1,
        },
    }
    assert acc["kept"] + acc["skipped"] + sum(acc["ignored"].values()) == acc["read"]
    assert len(prepared.dataset.interactions) == 77  # 78 lines: one record spans two
    assert [report["examples"][k][0]["line"] for k in acc["skipped_by_reason"]] == [63, 74]
    md = (prepared.directory / "data_report.md").read_text()
    assert "| r.csv | 82 lines | 78 | 2 | header 1, blank lines 1 |" in md


def test_amazon_lines_are_accounted_for(tmp_path):
    a = review("U1", "I1", text="Same.")
    lines = [
        a,
        b"",
        review("U1", "I2", text="Same."),
        a,
        b"{not json",
        review("U2", rating="x"),
        review("U3"),
    ]
    path = tmp_path / "r.json"
    path.write_bytes(b"".join((ln if isinstance(ln, bytes) else orjson.dumps(ln)) + b"\n" for ln in lines))
    _, problems = load_dataset(cfg(loader="amazon2018", path=str(path), strict=False))
    acc = problems.input_table()[str(path)]
    assert (acc["read"], acc["kept"], acc["skipped"]) == (7, 2, 2)
    assert acc["ignored"] == {"blank lines": 1, "variant copies": 1, "exact duplicates": 1}


# ------------------------------------------------------------------------ 15: ratings off the steps


def test_off_step_rating_in_a_csv_strict_error_whose_advice_works(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user_id,item_id,stars\nu1,i1,4\nu2,i2,3.5\n")
    fields = {"user_id": "user_id", "item_id": "item_id", "rating": "stars"}
    with pytest.raises(DataError) as ei:
        load_dataset(cfg(loader="tabular", path=str(path), fields=fields))
    e = ei.value
    assert (e.file, e.line, e.field) == (str(path), 3, "stars")
    assert "rating 3.5 is not on the scale's steps of 1 from 1" in str(e)
    step = re.search(r"set dataset\.scale\.step=(\S+) if", str(e)).group(1)
    ds, _ = load_dataset(
        cfg(loader="tabular", path=str(path), fields=fields, scale={"min": 1, "max": 5, "step": step})
    )
    assert ds.interactions["rating"].tolist() == [4.0, 3.5]
    ds, problems = load_dataset(cfg(loader="tabular", path=str(path), fields=fields, strict=False))
    assert ds.interactions["rating"].tolist() == [4.0]
    assert problems.skipped == {"stars: not on the scale's steps": 1}


def test_off_step_rating_in_amazon_and_release_files(tmp_path):
    path = jsonl(tmp_path / "r.json", [review("U1"), review("U2", rating=3.5)])
    with pytest.raises(
        DataError, match=r"r\.json, line 2, field 'overall': rating 3\.5 is not on the scale's steps"
    ):
        load_dataset(cfg(loader="amazon2018", path=str(path)))
    _, problems = load_dataset(cfg(loader="amazon2018", path=str(path), strict=False))
    assert problems.skipped == {"overall: not on the scale's steps": 1}

    rel = tmp_path / "rel"
    rel.mkdir()
    (rel / "test.json").write_text(json.dumps([release_rec("u1"), release_rec("u2", score="7.5")], indent=2))
    line = start_line_of(rel / "test.json", "u2")
    imdb = {"min": 1, "max": 10, "step": 1}
    release = {"rating_test": "test.json"}
    with pytest.raises(DataError) as ei:
        load_dataset(cfg(loader="exp3rt_release", path=str(rel), release=release, scale=imdb))
    assert ei.value.line == line and "record 2: rating 7.5 is not on the scale's steps of 1" in str(ei.value)
    assert "set dataset.scale.step=0.5" in str(ei.value)
    ds, problems = load_dataset(
        cfg(loader="exp3rt_release", path=str(rel), release=release, scale=imdb, strict=False)
    )
    assert ds.interactions["rating"].tolist() == [9.0]
    assert problems.skipped == {"score: not on the scale's steps": 1}


@pytest.mark.parametrize("value,step", [(3.5, 0.5), (3.25, 0.25), (3.3, 0.1), (3.14159, None)])
def test_the_suggested_step_includes_the_value_and_divides_the_scale(value, step):
    reason = RatingScale(1, 5, 1).off_grid(value)
    if step is None:
        assert "round the ratings to the scale's steps" in reason
        return
    assert f"set dataset.scale.step={step:g} " in reason
    finer = RatingScale(1, 5, step)
    assert finer.off_grid(value) is None and finer.off_grid(5.0) is None
