"""Release profile texts are LLM output: every header form the published files use must load strictly.

The published EXP3RT rating files write ``[Like]`` / ``[Dislike]`` / ``[Average Rating]`` headers, but
also ``**[Like]**`` (markdown bold), ``Like:`` / ``Likes:`` / ``**Like:**``, headings, other case, and a
few personas have no header at all. None of these may cost a pair; each quirk is counted in the report.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from exp3rt.data.problems import DataError, InputProblems
from exp3rt.data.release import (
    profile_sections,
    read_profiles,
    read_rating_file,
    split_profile,
    strip_average_section,
)
from exp3rt.data.schema import RatingScale

IMDB = RatingScale(1, 10)
DESC = "Title: Heat (1995)\nGenres: Crime, Drama\nPlot: A heist goes wrong."

LIKES = ["Tense heists", "Strong cast"]
DISLIKES = ["Long runtime"]
EXPECTED = (LIKES, DISLIKES, 7.5)

# header spellings seen in (or plausible for) the published files: (like, dislike, average)
HEADER_FORMS = {
    "canonical": ("[Like]", "[Dislike]", "[Average Rating]"),
    "bold_brackets": ("**[Like]**", "**[Dislike]**", "**[Average Rating]**"),
    "colon": ("Like:", "Dislike:", "Average Rating:"),
    "bold_colon_inside": ("**Like:**", "**Dislike:**", "**Average Rating:**"),
    "bold_colon_outside": ("**Like**:", "**Dislike**:", "**Average Rating**:"),
    "plural_colon": ("Likes:", "Dislikes:", "Average Rating:"),
    "plural_brackets": ("[Likes]", "[Dislikes]", "[Average Ratings]"),
    "upper_case": ("[LIKE]", "[DISLIKE]", "[AVERAGE RATING]"),
    "lower_case_spaced": ("[ like ]", "[ dislike ]", "[ average rating ]"),
    "trailing_space_and_colon": ("[Like]:  ", "[Dislike] : ", "[Average Rating]:"),
    "underscore_bold": ("__Like__", "__Dislike__", "__Average Rating__"),
    "heading": ("## Like", "### Dislikes", "## Average Rating"),
    "heading_bold_brackets": ("### **[Like]**", "### **[Dislike]**", "### **[Average Rating]**"),
    "italic": ("*Like*", "*Dislike*", "*Average Rating*"),
}


def profile(like: str, dislike: str, average: str, value: str = "7.5") -> str:
    return f"{like}\n- Tense heists\n- Strong cast\n\n{dislike}\n- Long runtime\n\n{average}\n{value}"


@pytest.mark.parametrize("form", list(HEADER_FORMS))
def test_header_forms_parse_the_same(form):
    assert split_profile(profile(*HEADER_FORMS[form])) == EXPECTED


@pytest.mark.parametrize(
    "text,expected",
    [
        # content on the header line is the first bullet
        ("Like: Tense heists\n- Strong cast\nDislike: Long runtime\nAverage Rating: 7.5", EXPECTED),
        (
            "**Like:** Tense heists\n- Strong cast\n**Dislike:** Long runtime\n**Average Rating:** 7.5",
            EXPECTED,
        ),
        ("Likes: Tense heists, strong cast\nDislikes: None.", (["Tense heists, strong cast"], [], None)),
        ("[Like]: Tense heists\n[Dislike] Long runtime", (["Tense heists"], ["Long runtime"], None)),
        # an ordinary bullet that starts with a section word stays a bullet
        (
            "[Like]\n- Likes the pacing\n- Like: a quiet score\n* Dislikes nothing\nDislikes loud endings\n"
            "[Dislike]\n- None.",
            (
                ["Likes the pacing", "Like: a quiet score", "Dislikes nothing", "Dislikes loud endings"],
                [],
                None,
            ),
        ),
        # a single-star bullet is not italic decoration
        ("[Like]\n* Like\n* Dislike\n[Dislike]\n- x", (["Like", "Dislike"], ["x"], None)),
    ],
    ids=[
        "colon_content",
        "bold_colon_content",
        "plural_content",
        "bracket_content",
        "bullets_not_headers",
        "star_bullets",
    ],
)
def test_header_with_content_and_bullets_that_are_not_headers(text, expected):
    assert split_profile(text) == expected


@pytest.mark.parametrize(
    "value,average",
    [
        ("7.5", 7.5),
        ("**7.5**", 7.5),
        ("7.5/10", 7.5),
        ("7.5 / 10", 7.5),
        ("**7.5**/10", 7.5),
        ("7.5 out of 10", 7.5),
        ("7.5.", 7.5),
        ("  8  ", 8.0),
        ("3.6/5", 3.6),
        ("**7.5/10**", 7.5),
        ("_6_", 6.0),
    ],
)
def test_average_with_decoration_parses(value, average):
    assert split_profile(profile("[Like]", "[Dislike]", "[Average Rating]", value))[2] == average


@pytest.mark.parametrize("value", ["high", "7 or 8", "7.5\n8.0", "N/A", "nan", "inf", "7_5", "12/10", ""])
def test_average_that_is_not_one_number_stays_a_problem(value):
    with pytest.raises(ValueError, match=r"\[Average Rating\]"):
        split_profile(profile("**[Like]**", "**[Dislike]**", "**[Average Rating]**", value))


def test_preamble_is_not_a_section():
    text = "Here is the profile you asked for.\n\n**[Like]**\n- a\n\n**[Dislike]**\n- b"
    assert profile_sections(text) == {"like": ["a"], "dislike": ["b"]}


@pytest.mark.parametrize("form", list(HEADER_FORMS))
def test_strip_average_section_in_every_form(form):
    text = profile(*HEADER_FORMS[form])
    stripped = strip_average_section(text)
    assert split_profile(stripped) == (LIKES, DISLIKES, None) and "7.5" not in stripped
    assert text.startswith(stripped)
    same_line = "Like: a\nDislike: b\n**Average Rating:** 7.5\n"
    assert strip_average_section(same_line) == "Like: a\nDislike: b"


def test_strip_average_section_matches_the_canonical_layout():
    text = "[Like]\n- a\n\n[Dislike]\n- None.\n\n[Average Rating]\n5.0"
    assert strip_average_section(text) == "[Like]\n- a\n\n[Dislike]\n- None."
    assert strip_average_section("free text only") == "free text only"


FREE_TEXT = "This viewer enjoys slow-burning crime dramas and dislikes loud, effects-heavy blockbusters."


def test_free_text_profile_has_empty_sides():
    assert split_profile(FREE_TEXT) == ([], [], None)


# ---------------------------------------------------------------------------------------------------
# whole files in the release record shape


def record(user: str, item: str, persona: str, synopsis: str, score: str = "8") -> dict:
    return {
        "user_id": user,
        "item_id": item,
        "user_persona": persona,
        "item_synopsis": synopsis,
        "item_description": DESC,
        "score": score,
    }


def mixed_records() -> list[dict]:
    """One record per header form (persona and synopsis), then the quirks the published files have."""
    recs = [
        record(f"u{k}", f"i{k}", profile(*forms), profile(*forms, value="8.0"))
        for k, forms in enumerate(HEADER_FORMS.values())
    ]
    canonical = profile(*HEADER_FORMS["canonical"])
    recs += [
        record("free1", "i1", FREE_TEXT, canonical),  # a persona with no header at all
        record("free2", "i2", FREE_TEXT + "\n\n[Average Rating]\n6.0", canonical),
        record(
            "pre", "i3", "Sure! Here is the persona:\n\n" + profile(*HEADER_FORMS["bold_brackets"]), canonical
        ),
        record(
            "same_line",
            "i4",
            "Like: action scenes, humour\nDislike: None.\nAverage Rating: 7.5/10",
            canonical,
        ),
        record("cut", "i5", canonical, "**[Like]**\n- Great cast\n\n**[Average Rating]**\n**8.8**"),
    ]
    return recs


def write_json(path: Path, data) -> Path:
    """One record per line after the opening "[": record k starts on physical line k + 1."""
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in data) + "\n]\n")
    return path


def test_rating_file_with_every_variant_loads_strictly(tmp_path):
    recs = mixed_records()
    f = write_json(tmp_path / "test_helpful.json", recs)
    p = InputProblems(strict=True)
    df = read_rating_file(f, IMDB, p)
    assert len(df) == len(recs) and df["_line"].tolist() == list(range(2, len(recs) + 2))
    assert p.total_skipped == 0
    by_user = df.set_index("user_id")
    for k in range(len(HEADER_FORMS)):
        assert split_profile(by_user.loc[f"u{k}", "user_profile"]) == EXPECTED
        assert split_profile(by_user.loc[f"u{k}", "item_profile"]) == (LIKES, DISLIKES, 8.0)
    # the free-text persona is kept as it is; its sides are empty
    assert by_user.loc["free1", "user_profile"] == FREE_TEXT
    assert split_profile(by_user.loc["free2", "user_profile"]) == ([], [], 6.0)
    assert split_profile(by_user.loc["same_line", "user_profile"]) == (["action scenes, humour"], [], 7.5)
    assert split_profile(by_user.loc["cut", "item_profile"]) == (["Great cast"], [], 8.8)
    # every quirk is counted under one stable reason
    assert p.notes["user_persona without [Like]/[Dislike] headers (kept as free text)"] == 2
    assert (
        p.notes["user_persona: text before the first [Like]/[Dislike] header (kept in the profile text)"] == 1
    )
    assert p.notes["item_synopsis without a [Dislike] section (truncated in the source; read as empty)"] == 1
    variant = "user_persona: section headers written another way (e.g. **[Like]**, Like:; read the same)"
    # every form but the three the old parser read ([Like], [LIKE], [ like ]), + pre and same_line
    assert p.notes[variant] == len(HEADER_FORMS) - 3 + 2
    # the note says where: the lines where the first such records start
    assert [
        ex["line"]
        for ex in p.note_examples["user_persona without [Like]/[Dislike] headers (kept as free text)"]
    ] == [len(HEADER_FORMS) + 2, len(HEADER_FORMS) + 3]


def test_profile_file_with_variants_and_free_text_loads_strictly(tmp_path):
    f = write_json(
        tmp_path / "user_profiles.json",
        [
            {"user_id": "a", "user_persona": "**[Like]**\n- x\n\n**[Dislike]**\n- y"},
            {"user_id": "b", "user_persona": FREE_TEXT},
            {"user_id": "c", "user_persona": "Likes:\n- z\nDislikes:\n- None."},
        ],
    )
    p = InputProblems(strict=True)
    df = read_profiles(f, "user", p)
    assert df["id"].tolist() == ["a", "b", "c"]
    assert df["likes"].tolist() == [["x"], [], ["z"]] and df["dislikes"].tolist() == [["y"], [], []]
    assert df["profile"].iloc[1] == FREE_TEXT
    assert p.notes["user_persona without [Like]/[Dislike] headers (kept as free text)"] == 1


def bad_average(user: str) -> dict:
    return record(
        user, "i", "**[Like]**\n- a\n**[Average Rating]**\nhigh", profile(*HEADER_FORMS["canonical"])
    )


def test_strict_still_names_file_record_and_field(tmp_path):
    f = write_json(tmp_path / "r.json", [*mixed_records(), bad_average("bad")])
    with pytest.raises(DataError) as ei:
        read_rating_file(f, IMDB, InputProblems(strict=True))
    n = len(mixed_records()) + 1  # the bad record's number; it starts on line n + 1
    assert (ei.value.line, ei.value.field) == (n + 1, "user_persona") and f"record {n}:" in str(ei.value)
    assert "[Average Rating]" in str(ei.value)


def test_lenient_report_has_one_row_per_reason_with_counts_and_first_records(tmp_path):
    good = mixed_records()
    bad = {
        3: bad_average("b3"),
        5: "not an object",
        6: [1, 2],
        8: bad_average("b8"),
        9: record("b9", ["x"], FREE_TEXT, FREE_TEXT),
        11: record("b11", {"id": 1}, FREE_TEXT, FREE_TEXT),
        12: bad_average("b12"),
        14: record("b14", "i", FREE_TEXT, FREE_TEXT, score=[9]),
        15: bad_average("b15"),
        16: bad_average("b16"),
        17: bad_average("b17"),
        18: bad_average("b18"),
        19: bad_average("b19"),
    }
    n = len(good) + len(bad)
    it = iter(good)
    recs = [bad[k] if k in bad else next(it) for k in range(1, n + 1)]
    f = write_json(tmp_path / "test_helpful.json", recs)
    p = InputProblems(strict=False)
    df = read_rating_file(f, IMDB, p)
    assert len(df) == len(good) and p.total_skipped == len(bad)
    # one reason per kind of problem, whatever the record number or the value
    assert dict(p.skipped) == {
        "user_persona: bad [Average Rating]": 8,
        "record is not a JSON object": 2,
        "item_id: not a string": 2,
        "score: not a number": 1,
    }
    assert all(not re.search(r"\d", kind) for kind in [*p.skipped, *p.notes])

    out = tmp_path / "report"
    p.write(out)
    md = (out / "data_report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| user_persona: bad [Average Rating]")]
    assert len(rows) == 1
    assert "| 8 |" in rows[0] and "test_helpful.json: 4, 9, 13, 16, 17, …" in rows[0]
    assert sum(line.startswith("| record is not a JSON object") for line in md.splitlines()) == 1
    free = [
        line for line in md.splitlines() if line.startswith("| user_persona without [Like]/[Dislike] headers")
    ]
    assert len(free) == 1 and "| 2 |" in free[0]
    report = json.loads((out / "data_report.json").read_text())
    assert report["skipped"]["user_persona: bad [Average Rating]"] == 8
    # record k starts on line k + 1
    assert [ex["line"] for ex in report["examples"]["user_persona: bad [Average Rating]"]] == [
        4,
        9,
        13,
        16,
        17,
        18,
        19,
        20,
    ]
    assert report["note_examples"]["user_persona without [Like]/[Dislike] headers (kept as free text)"][0][
        "line"
    ] == 1 + next(k for k in range(1, n + 1) if k not in bad and recs[k - 1]["user_id"] == "free1")


@pytest.mark.shared_data
def test_real_sample_with_decorated_headers_loads_strictly(shared_data, tmp_path):
    """The published test_helpful.json decorates the headers of some records (**[Like]**): same pairs,
    same likes/dislikes/averages as the undecorated text."""
    src = shared_data / "exp3rt-release-sample/imdb/rating_test_sample.json"
    recs = json.loads(src.read_text())
    decorated = [dict(r) for r in recs]
    for k in range(0, len(decorated), 3):
        for name in ("user_persona", "item_synopsis"):
            decorated[k][name] = re.sub(
                r"^\[(Like|Dislike|Average Rating)\]$", r"**[\1]**", decorated[k][name], flags=re.MULTILINE
            )
    f = write_json(tmp_path / "test_helpful.json", decorated)
    p = InputProblems(strict=True)
    df = read_rating_file(f, IMDB, p)
    assert len(df) == len(recs) and p.total_skipped == 0
    for r, (persona, synopsis) in zip(
        recs, zip(df["user_profile"], df["item_profile"], strict=True), strict=True
    ):
        assert split_profile(persona) == split_profile(r["user_persona"])
        assert split_profile(synopsis) == split_profile(r["item_synopsis"])
