"""Read the data files published with EXP3RT (arXiv 2408.06276) into canonical form.

The release is a folder of JSON lists and LightGCN text files; ``dataset.release`` names each file
relative to ``dataset.path`` (null = absent). Every reader here is usable on its own — the teacher
stage imports release profiles, the evaluator reads a release rating file as a test file, the reranker
reads the LightGCN top-k files — and reports bad input through :class:`InputProblems`, naming the
file, the line (for JSON lists: the physical line where the record starts; reasons add "record N")
and the field.

Formats (one record shown per file kind):

- rating file: ``{user_id, item_id, user_persona, item_synopsis, item_description, score, [rationale]}``;
  ``score`` is a string ``"1"``–``"10"`` (IMDB) or ``"1"``–``"5"`` (Amazon book). Personas and
  synopses are ``[Like]`` / ``[Dislike]`` bullet lists (``- None.`` for an empty side) closed by an
  ``[Average Rating]`` line. The item synopsis can differ between two records of one item (the
  release selects an item's reviews per target user), so :func:`load_release` keeps the per-pair texts
  in ``extras["pair_profiles"]`` besides the one-row-per-id tables.
- profile files: ``{user_id, user_persona}`` / ``{item_id, item_synopsis}`` (no average line).
- profile SFT files: ``{instruction, input, output}``; ``input`` is preference sets joined by
  ``\\n---\\n``.
- top-k folder (LightGCN): ``train.txt`` / ``test.txt`` lines ``user_remap item_remap ...``;
  ``user_list.txt`` / ``item_list.txt`` with header ``org_id remap_id`` (the Amazon-Book ``org/``
  lists have none). :func:`exp3rt.data.topk.load_topk` (loader ``lightgcn_topk``) loads such a folder as a
  dataset.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import orjson
import pandas as pd

from exp3rt.config import ConfigError
from exp3rt.data.problems import InputProblems
from exp3rt.data.schema import Dataset, RatingScale, scale_of

RATING_FIELDS = ["user_id", "item_id", "user_persona", "item_synopsis", "item_description", "score"]
RATING_COLUMNS = [
    "user_id",
    "item_id",
    "rating",
    "user_profile",
    "item_profile",
    "item_description",
    "rationale",
    "_line",
]
PROFILE_COLUMNS = ["id", "profile", "likes", "dislikes", "average"]
SFT_FIELDS = ["instruction", "input", "output"]
SFT_SET_SEPARATOR = "\n---\n"
SPLITS = ("train", "valid", "test")

# A profile section header. The canonical form is the whole line "[Like]" / "[Dislike]" /
# "[Average Rating]"; LLM output also writes "**[Like]**", "Like:", "**Likes:**", "## Dislike", "[LIKE]",
# "__Like__", "*Like*", optionally with content after a colon ("Like: action, humour"). A header is
# the whole line being the (decorated) name, or "Name:" / "[Name]" followed by content; a bullet
# ("- Likes the pacing", "* Like") never is.
_CANONICAL_SECTION = re.compile(r"^\s*\[\s*(like|dislike|average rating)\s*\]\s*$", re.IGNORECASE)
_SECTION_NAME = r"likes?|dislikes?|average[ _-]*ratings?"
_SECTION = re.compile(
    rf"""^\s*(?:\#{{1,6}}\s*)?                 # markdown heading marks
    (?P<deco>\*{{1,3}}|_{{1,3}})?\s*       # opening bold/italic
    (?:\[\s*(?P<bracketed>{_SECTION_NAME})\s*\]|(?P<bare>{_SECTION_NAME}))
    \s*(?P<colon1>:)?\s*
    (?(deco)(?P=deco))                    # the same closing decoration
    \s*(?P<colon2>:)?\s*
    (?P<rest>.*?)\s*$""",
    re.IGNORECASE | re.VERBOSE,
)
# the number of an [Average Rating] section: "7.5", "**7.5**", "7.5/10", "**7.5**/10", "7.5 out of 10"
_AVERAGE_VALUE = re.compile(
    r"^(?P<deco>\*{1,3}|_{1,3})?\s*(?P<num>[-+]?\d+(?:\.\d+)?)\s*(?(deco)(?P=deco))"
    r"\s*(?:(?:/|out\s+of)\s*(?P<den>\d+(?:\.\d+)?))?\s*\.?$",
    re.IGNORECASE,
)
_WRAPPED = re.compile(r"^(\*{1,3}|_{1,3})(.+?)\1$")  # "**7.5/10**"
_NONE_BULLET = re.compile(r"^none\.?$", re.IGNORECASE)
# "- x", "\u2022 x", "* x"; a star followed by text is markdown emphasis ("**Great cast**"), not a bullet
_BULLET = re.compile(r"^\s*(?:[-\u2022]|\*(?=\s|$))\s?")
# "Key: value" starts a field of an item description; keys are short capitalised words
_DESC_KEY = re.compile(r"^([A-Z][A-Za-z &/_-]{0,30}):\s?(.*)$")
_KNOWN_DESC_KEYS = {
    "Title",
    "Genres",
    "Categories",
    "Directors",
    "Director",
    "Cast",
    "Author",
    "Authors",
    "Plot",
}


# ---------------------------------------------------------------------------------------------------
# Profiles and descriptions (pure text helpers)


def _section_header(line: str) -> tuple[str, str] | None:
    """``(section, content after the header)`` when ``line`` is a section header, else None."""
    m = _SECTION.match(line)
    if not m:
        return None
    rest = m.group("rest")
    if rest and not (m.group("colon1") or m.group("colon2") or m.group("bracketed")):
        return None  # "Likes the pacing": prose, not a header
    name = re.sub(r"[ _-]+", " ", (m.group("bracketed") or m.group("bare")).lower())
    name = "average rating" if name.startswith("average") else name.rstrip("s")
    return name, rest


@dataclass
class ProfileScan:
    """What :func:`scan_profile` found in a profile text."""

    sections: dict[str, list[str]]  # like / dislike / average rating -> bullet texts
    preamble: list[str]  # non-empty lines before the first header
    other_headers: bool  # a header was written in a non-canonical form (**[Like]**, Like:, ...)


def scan_profile(text: str) -> ProfileScan:
    """Split a profile text into its sections, tolerating the header forms LLM output uses.

    Bullet markers are removed and empty bullets dropped; content on a header line ("Like: humour") is
    the section's first bullet. Lines before the first header are returned as ``preamble``.
    """
    sections: dict[str, list[str]] = {}
    preamble: list[str] = []
    other = False
    current: list[str] | None = None
    for raw in text.splitlines():
        header = _section_header(raw)
        if header:
            other = other or not _CANONICAL_SECTION.match(raw)
            current = sections.setdefault(header[0], [])
            raw = header[1]
        line = _BULLET.sub("", raw, count=1).strip()
        if not line:
            continue
        (preamble if current is None else current).append(line)
    return ProfileScan(sections, preamble, other)


def profile_sections(text: str) -> dict[str, list[str]]:
    """Split a ``[Like]`` / ``[Dislike]`` / ``[Average Rating]`` block into its sections' lines.

    Keys are ``like``, ``dislike``, ``average rating`` (only the sections present). Headers may be
    decorated (``**[Like]**``, ``Likes:``, ``## Dislike``, ...; see :func:`scan_profile`). Bullet
    markers are removed, empty bullets dropped; text before the first section header is ignored.
    """
    return scan_profile(text).sections


def strip_average_section(text: str) -> str:
    """``text`` without its ``[Average Rating]`` section (the header, in any form :func:`scan_profile`
    reads, and the lines up to the next header); everything else is kept verbatim."""
    kept: list[str] = []
    in_average = False
    for raw in text.splitlines():
        header = _section_header(raw)
        if header:
            in_average = header[0] == "average rating"
        if not in_average:
            kept.append(raw)
    return "\n".join(kept).rstrip()


def _average(lines: list[str]) -> float:
    """The one number of an ``[Average Rating]`` section: ``7.5``, ``**7.5**``, ``7.5/10``,
    ``7.5 out of 10``."""
    match = None
    if len(lines) == 1:
        value = lines[0].strip()
        wrapped = _WRAPPED.match(value)
        match = _AVERAGE_VALUE.match(wrapped.group(2).strip() if wrapped else value)
    if match is None:
        raise ValueError(f"[Average Rating] must be followed by one number, got {lines!r}")
    value = float(match.group("num"))
    if match.group("den") is not None and value > float(match.group("den")):
        raise ValueError(
            f"[Average Rating] must be followed by one number, got {lines!r} (above its own maximum)"
        )
    return value


def split_profile(text: str) -> tuple[list[str], list[str], float | None]:
    """Return ``(likes, dislikes, average)`` of a profile text.

    A side written as ``None`` / ``None.`` is empty; a missing section is empty (the release has
    synopses cut off before ``[Dislike]``; a free-text profile has neither side); ``average`` is None
    without an ``[Average Rating]`` line. Raises :class:`ValueError` when the ``[Average Rating]``
    section is not one number (decoration such as ``**7.5**`` or ``7.5/10`` is allowed).
    """
    sections = profile_sections(text)

    def side(name: str) -> list[str]:
        return [b for b in sections.get(name, []) if not _NONE_BULLET.match(b)]

    average = _average(sections["average rating"]) if "average rating" in sections else None
    return side("like"), side("dislike"), average


def parse_item_description(text: str) -> dict:
    """Parse a release item description block into canonical item fields.

    Handles ``Title/Genres/Directors/Cast/Plot`` (IMDB) and ``Title/Categories/Author/Plot`` (Amazon
    book), and generically any ``Key: value`` lines. Returns ``{"title", "categories", "description",
    "extra"}``: ``categories`` is Genres or Categories split on ", ", ``description`` is Plot, ``extra``
    holds the other keys verbatim. A line that does not start a key continues the previous value; once
    Plot has begun only a known key ends it (a plot may contain "Word: ..." sentences). Text without any
    key becomes the description.
    """
    fields: dict[str, str] = {}
    key: str | None = None
    for raw in text.splitlines():
        m = _DESC_KEY.match(raw)
        if m and not (key == "Plot" and m.group(1) not in _KNOWN_DESC_KEYS):
            key = m.group(1)
            if key in fields:  # a repeated key continues its first occurrence
                fields[key] += "\n" + m.group(2).strip()
            else:
                fields[key] = m.group(2).strip()
        elif key is not None:
            fields[key] = (fields[key] + "\n" + raw.strip()).strip()
        elif raw.strip():
            fields["Plot"] = (fields.get("Plot", "") + "\n" + raw.strip()).strip()
            key = "Plot"
    cats = fields.pop("Genres", None)
    cats_other = fields.pop("Categories", None)
    if cats is None:
        cats = cats_other
    elif cats_other is not None:
        fields["Categories"] = cats_other
    categories = [c.strip() for c in cats.split(", ") if c.strip()] if cats else []
    title = fields.pop("Title", None) or None
    description = fields.pop("Plot", None) or None
    return {"title": title, "categories": categories, "description": description, "extra": fields}


# ---------------------------------------------------------------------------------------------------
# File readers


# a JSON string (escapes included) or a structural character; a record starts after "[" or "," at depth 1
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]')
_NON_SPACE = re.compile(rb"\S")


def _record_start_lines(raw: bytes) -> list[int]:
    """The physical line (1-based) on which each element of the top-level JSON list in ``raw`` starts.

    orjson reports no positions, so one regex pass finds the list's own commas (strings are matched
    whole, so a comma or bracket inside text never counts) and newlines are counted between them.
    Only called on bytes that parsed as a list."""
    starts: list[int] = []
    depth, line, pos = 0, 1, 0
    for m in _JSON_TOKEN.finditer(raw):
        c = raw[m.start()]
        if c == 0x22:  # a string
            continue
        if c in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth != 1:
                continue
        elif c in (0x5D, 0x7D):  # ] }
            depth -= 1
            continue
        elif depth != 1:  # a comma inside a record
            continue
        nxt = _NON_SPACE.search(raw, m.end())
        if nxt is None or raw[nxt.start()] == 0x5D:  # "[]": no element after the opening bracket
            continue
        line += raw.count(b"\n", pos, nxt.start())
        pos = nxt.start()
        starts.append(line)
    return starts


def _bad_utf8(raw: bytes) -> tuple[int, int, str] | None:
    """``(line, column, byte)`` of the first byte of ``raw`` that is not valid UTF-8, or None."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as ue:
        line_start = raw.rfind(b"\n", 0, ue.start) + 1
        column = len(raw[line_start : ue.start].decode("utf-8", errors="replace")) + 1
        return raw.count(b"\n", 0, ue.start) + 1, column, f"0x{raw[ue.start]:02x}"
    return None


def _read_json_records(path: Path, problems: InputProblems) -> list[tuple[int, int | None, object]]:
    """``(record index, physical line where the record starts, record)`` for each element of a JSON
    file whose top level must be a list; [] when the file was skipped (lenient). Problems name the
    physical line; their reasons keep "record N"."""
    raw = path.read_bytes()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        bad = _bad_utf8(raw)
        if bad is not None:
            line, column, byte = bad
            problems.bad(
                path,
                line,
                None,
                f"bad encoding: byte {byte} at line {line} column {column} is not valid UTF-8; "
                "the whole file is unusable",
                kind="file is not valid UTF-8",
            )
        else:
            problems.bad(
                path,
                e.lineno,
                None,
                f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}; the whole file is unusable",
                kind="file is not valid JSON",
            )
        problems.account(path, read=0, kept=0, unit="records")
        return []
    if not isinstance(data, list):
        problems.bad(
            path,
            None,
            None,
            f"top level must be a JSON list of records, got {type(data).__name__}",
            kind="file is not a JSON list",
        )
        problems.account(path, read=0, kept=0, unit="records")
        return []
    lines: list = _record_start_lines(raw)
    if len(lines) != len(data):  # cannot happen for a list that parsed; never guess a line
        lines = [None] * len(data)
    return [(i, line, rec) for i, (line, rec) in enumerate(zip(lines, data, strict=True), start=1)]


def _record(path: Path, index: int, line: int, record, problems: InputProblems) -> dict | None:
    if isinstance(record, dict):
        return record
    problems.bad(
        path,
        line,
        None,
        f"record {index} is a {type(record).__name__}, expected a JSON object",
        kind="record is not a JSON object",
    )
    return None


def _text_field(
    path: Path, index: int, line: int, record: dict, name: str, problems: InputProblems, ids: bool = False
):
    """A required non-empty string field (ids may also be JSON integers); None after a reported problem."""
    if name not in record or record[name] is None:
        problems.bad(path, line, name, f"record {index}: missing field", kind=f"{name}: missing")
        return None
    value = record[name]
    if ids and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        problems.bad(
            path,
            line,
            name,
            f"record {index}: expected a string, got {type(value).__name__}",
            kind=f"{name}: not a string",
        )
        return None
    if not value.strip():
        problems.bad(path, line, name, f"record {index}: empty text", kind=f"{name}: empty")
        return None
    return value


def _check_profile(
    path: Path, index: int, line: int, name: str, text: str, problems: InputProblems
) -> list[str] | None:
    """Check a profile text; None after a reported problem, else the quirks to note if the record is kept.

    Only an ``[Average Rating]`` section that is not one number is a problem. A text without any
    ``[Like]`` / ``[Dislike]`` header is kept as free text (it is what a prompt shows either way) with
    empty sides; text before the first header, headers in another form and a missing side are noted.
    """
    scan = scan_profile(text)
    try:
        split_profile(text)
    except ValueError as e:
        problems.bad(path, line, name, f"record {index}: {e}", kind=f"{name}: bad [Average Rating]")
        return None
    has_like, has_dislike = "like" in scan.sections, "dislike" in scan.sections
    notes = []
    if not has_like and not has_dislike:
        notes.append(f"{name} without [Like]/[Dislike] headers (kept as free text)")
    else:
        if scan.preamble:
            notes.append(f"{name}: text before the first [Like]/[Dislike] header (kept in the profile text)")
        if not has_like or not has_dislike:
            missing = "[Dislike]" if has_like else "[Like]"
            notes.append(f"{name} without a {missing} section (truncated in the source; read as empty)")
    if scan.other_headers:
        notes.append(f"{name}: section headers written another way (e.g. **[Like]**, Like:; read the same)")
    return notes


def _score(
    path: Path, index: int, line: int, record: dict, scale: RatingScale, problems: InputProblems
) -> float | None:
    if "score" not in record or record["score"] is None:
        problems.bad(path, line, "score", f"record {index}: missing field", kind="score: missing")
        return None
    raw = record["score"]
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        problems.bad(
            path,
            line,
            "score",
            f"record {index}: expected a number as text, got {raw!r}",
            kind="score: not a number",
        )
        return None
    try:
        value = float(raw.strip() if isinstance(raw, str) else raw)
    except ValueError:
        problems.bad(
            path, line, "score", f"record {index}: {raw!r} is not a number", kind="score: not a number"
        )
        return None
    if not scale.contains(value):
        problems.bad(
            path,
            line,
            "score",
            f"record {index}: {raw!r} is outside the dataset scale [{scale.min:g}, {scale.max:g}] "
            f"(check dataset.scale)",
            kind="score: outside scale",
        )
        return None
    off = scale.off_grid(value)
    if off is not None:
        problems.bad(path, line, "score", f"record {index}: {off}", kind="score: not on the scale's steps")
        return None
    return value


def read_rating_file(path: str | Path, scale: RatingScale, problems: InputProblems) -> pd.DataFrame:
    """Read a release rating file (a JSON list of rating records).

    Returns one row per usable record with columns ``user_id, item_id, rating (float), user_profile,
    item_profile, item_description, rationale (nullable), _line`` (the physical line where the record
    starts). Profiles are
    the raw persona / synopsis texts; :func:`split_profile` parses them.
    """
    path = Path(path)
    data = _read_json_records(path, problems)
    rows = []
    for index, line, rec in data:
        rec = _record(path, index, line, rec, problems)
        if rec is None:
            continue
        uid = _text_field(path, index, line, rec, "user_id", problems, ids=True)
        iid = uid and _text_field(path, index, line, rec, "item_id", problems, ids=True)
        texts, quirks = {}, []
        for name in ("user_persona", "item_synopsis", "item_description"):
            if iid is None:
                break
            texts[name] = _text_field(path, index, line, rec, name, problems)
            if texts[name] is None:
                break
            if name != "item_description":
                found = _check_profile(path, index, line, name, texts[name], problems)
                if found is None:
                    texts[name] = None
                    break
                quirks += found
        if uid is None or iid is None or len(texts) < 3 or None in texts.values():
            continue
        rating = _score(path, index, line, rec, scale, problems)
        if rating is None:
            continue
        rationale = rec.get("rationale")
        if rationale is not None and not isinstance(rationale, str):
            problems.bad(
                path,
                line,
                "rationale",
                f"record {index}: expected a string, got {type(rationale).__name__}",
                kind="rationale: not a string",
            )
            continue
        if rationale is not None and not rationale.strip():
            quirks.append("empty rationale read as missing")
            rationale = None
        for quirk in quirks:  # noted only for kept records: a skipped one is counted once, as a skip
            problems.note(quirk, file=path, line=line)
        rows.append(
            (
                uid,
                iid,
                rating,
                texts["user_persona"],
                texts["item_synopsis"],
                texts["item_description"],
                rationale,
                line,
            )
        )
    problems.account(path, read=len(data), kept=len(rows), unit="records")
    df = pd.DataFrame(rows, columns=RATING_COLUMNS)
    df["rating"] = df["rating"].astype("float64")
    df["_line"] = df["_line"].astype("int64")
    for col in ("user_id", "item_id", "user_profile", "item_profile", "item_description", "rationale"):
        df[col] = df[col].astype("string")
    return df


def profile_table(ids, texts, source: str | None = None) -> pd.DataFrame:
    """Build the profiles table (``id, profile, likes, dislikes, average``) from validated texts."""
    parsed = [split_profile(t) for t in texts]
    df = pd.DataFrame(
        {
            "id": pd.array(list(ids), dtype="string"),
            "profile": pd.array(list(texts), dtype="string"),
            "likes": [p[0] for p in parsed],
            "dislikes": [p[1] for p in parsed],
            "average": pd.array([p[2] for p in parsed], dtype="Float64"),
        }
    )
    if source is not None:
        df["source"] = source
    return df


def read_profiles(path: str | Path, kind: str, problems: InputProblems) -> pd.DataFrame:
    """Read a release profile file: ``user_id + user_persona`` (kind="user") or ``item_id +
    item_synopsis`` (kind="item"). Returns ``id, profile, likes, dislikes, average`` (average is null
    where the text has no ``[Average Rating]`` line). A repeated id keeps its first profile (noted)."""
    if kind not in ("user", "item"):
        raise ValueError(f"read_profiles: kind must be 'user' or 'item', got {kind!r}")
    id_field, text_field = ("user_id", "user_persona") if kind == "user" else ("item_id", "item_synopsis")
    path = Path(path)
    ids, texts, seen = [], [], set()
    n_repeated = 0
    records = _read_json_records(path, problems)
    for index, line, rec in records:
        rec = _record(path, index, line, rec, problems)
        if rec is None:
            continue
        pid = _text_field(path, index, line, rec, id_field, problems, ids=True)
        text = pid and _text_field(path, index, line, rec, text_field, problems)
        quirks = (
            None
            if pid is None or text is None
            else _check_profile(path, index, line, text_field, text, problems)
        )
        if quirks is None:
            continue
        if pid in seen:
            problems.note(
                f"repeated {id_field} in a {kind} profile file: kept the first profile", file=path, line=line
            )
            n_repeated += 1
            continue
        for quirk in quirks:
            problems.note(quirk, file=path, line=line)
        seen.add(pid)
        ids.append(pid)
        texts.append(text)
    problems.account(path, read=len(records), kept=len(ids), unit="records", repeated_ids=n_repeated)
    return profile_table(ids, texts)


def read_profile_sft(path: str | Path, problems: InputProblems) -> pd.DataFrame:
    """Read a release profile SFT file (``instruction, input, output`` records). Returns those columns
    plus ``n_sets``, the number of preference sets in ``input`` (joined by ``\\n---\\n``)."""
    path = Path(path)
    rows = []
    records = _read_json_records(path, problems)
    for index, line, rec in records:
        rec = _record(path, index, line, rec, problems)
        if rec is None:
            continue
        values = []
        for name in SFT_FIELDS:
            value = _text_field(path, index, line, rec, name, problems)
            if value is None:
                break
            values.append(value)
        if len(values) < len(SFT_FIELDS):
            continue
        n_sets = sum(1 for s in values[1].split(SFT_SET_SEPARATOR) if s.strip())
        rows.append((*values, n_sets))
    problems.account(path, read=len(records), kept=len(rows), unit="records")
    df = pd.DataFrame(rows, columns=[*SFT_FIELDS, "n_sets"])
    for col in SFT_FIELDS:
        df[col] = df[col].astype("string")
    df["n_sets"] = df["n_sets"].astype("int64")
    return df


@dataclass
class TopK:
    """LightGCN top-k files read back to the dataset's own ids.

    ``train`` / ``test``: implicit interactions ``user_id, item_id`` (original ids, strings) with
    ``_line`` (line in train.txt / test.txt). ``user_ids`` / ``item_ids``: the maps ``org_id, remap_id``.
    """

    train: pd.DataFrame
    test: pd.DataFrame
    user_ids: pd.DataFrame
    item_ids: pd.DataFrame


TOPK_FILES = ("train.txt", "test.txt", "user_list.txt", "item_list.txt")


def _read_id_map(path: Path, problems: InputProblems) -> dict[int, str]:
    """``org_id remap_id`` header, then one mapping per line (an org id may contain spaces).

    A list whose first line is already a mapping (no header: the release's Amazon-Book ``org/`` lists)
    is read from line 1 and noted; any other first line is bad input."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split() if lines else []
    has_header = header == ["org_id", "remap_id"]
    headerless = not has_header and len(header) >= 2 and header[-1].isdigit()
    if headerless:
        problems.note(f"{path.name}: id list without a header line (read from line 1)")
    elif not has_header:
        got = lines[0] if lines else "an empty file"
        problems.bad(path, 1, "header", f"expected the header 'org_id remap_id', got {got!r}")
    out: dict[int, str] = {}
    seen_org: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        if lineno == 1 and not headerless:
            continue  # the header (or, lenient, some other header that is not a mapping)
        if not line.strip():
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].isdigit():
            problems.bad(path, lineno, "remap_id", f"expected 'org_id remap_id', got {line!r}")
            continue
        org, remap = parts[0].strip(), int(parts[1])
        if remap in out:
            problems.bad(path, lineno, "remap_id", f"remap id {remap} already maps to {out[remap]!r}")
            continue
        if org in seen_org:
            problems.bad(path, lineno, "org_id", f"org id {org!r} already has remap id {seen_org[org]}")
            continue
        out[remap] = org
        seen_org[org] = remap
    return out


def _read_lightgcn_pairs(path: Path, users: dict[int, str], items: dict[int, str], problems: InputProblems):
    """One row per distinct (user, item) of a LightGCN interaction file, in file order.

    The release repeats users: ``topk/imdb/org/test.txt`` has 2,577 lines for 859 users. A user's later
    lines are merged into the first (counted: the lines and the item ids on them), and a pair listed
    twice is kept once (counted); ``_line`` is the line of its first listing."""
    rows = []
    empty_users = 0
    seen_users: set[str] = set()
    repeated_lines = repeated_items = 0
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        head, rest = tokens[0], tokens[1:]
        if not head.isdigit() or int(head) not in users:
            what = "not an integer" if not head.isdigit() else "not in user_list.txt"
            problems.bad(path, lineno, "user_remap", f"user remap id {head!r} is {what}")
            continue
        user = users[int(head)]
        if user in seen_users:
            repeated_lines += 1
            repeated_items += len(rest)
        seen_users.add(user)
        if not rest:
            empty_users += 1
        for tok in rest:
            if not tok.isdigit() or int(tok) not in items:
                what = "not an integer" if not tok.isdigit() else "not in item_list.txt"
                problems.bad(path, lineno, "item_remap", f"item remap id {tok!r} is {what}")
                continue
            rows.append((user, items[int(tok)], lineno))
    problems.note(f"users with no items in {path.name}", empty_users)
    problems.note(f"{path.name}: repeated user lines (merged into the user's first line)", repeated_lines)
    problems.note(f"{path.name}: item ids on repeated user lines", repeated_items)
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "_line"])
    dup = df.duplicated(["user_id", "item_id"], keep="first")
    problems.note(f"{path.name}: duplicate (user, item) pairs (kept once)", int(dup.sum()))
    df = df[~dup].reset_index(drop=True)
    df["user_id"] = df["user_id"].astype("string")
    df["item_id"] = df["item_id"].astype("string")
    df["_line"] = df["_line"].astype("int64")
    return df


def read_topk(directory: str | Path, problems: InputProblems) -> TopK:
    """Read a LightGCN data folder (train.txt, test.txt, user_list.txt, item_list.txt) and map every
    remap id back to the dataset's own ids. A user line with no items is allowed (counted in notes), so
    are repeated user lines and repeated pairs within a file (merged, counted) and id lists without a
    header (noted); an id missing from the lists is bad input naming file and line. A pair in both
    files stays in both: :func:`exp3rt.data.topk.load_topk` resolves that by ``dataset.duplicates``."""
    directory = Path(directory)
    missing = [name for name in TOPK_FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"top-k folder {directory} lacks {', '.join(missing)} (LightGCN format needs {TOPK_FILES})"
        )
    users = _read_id_map(directory / "user_list.txt", problems)
    items = _read_id_map(directory / "item_list.txt", problems)

    def id_map(m: dict[int, str]) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "org_id": pd.array(list(m.values()), dtype="string"),
                "remap_id": pd.array(list(m), dtype="int64"),
            }
        )

    return TopK(
        train=_read_lightgcn_pairs(directory / "train.txt", users, items, problems),
        test=_read_lightgcn_pairs(directory / "test.txt", users, items, problems),
        user_ids=id_map(users),
        item_ids=id_map(items),
    )


# ---------------------------------------------------------------------------------------------------
# The loader


def no_release_folder(cfg) -> str:
    """The sentence for a ``dataset.path`` that is not a release folder."""
    return (
        f"dataset.path={cfg.path} is not a folder: dataset '{cfg.name}' reads the EXP3RT release's published "
        "files; pass dataset.path=/path/to/EXP3RT/data/<imdb|amazon-book> (or set "
        "EXP3RT_RELEASE=/path/to/EXP3RT/data)"
    )


def _configured(cfg) -> dict[str, Path]:
    """Each file ``dataset.release`` names, resolved under ``dataset.path``; a missing one is an error."""
    base = Path(str(cfg.path))
    if not base.is_dir():
        raise FileNotFoundError(no_release_folder(cfg))
    out = {}
    for key, name in cfg.release.items():
        if name is None:
            continue
        path = base / str(name)
        exists = path.is_dir() if key == "topk_dir" else path.is_file()
        if not exists:
            kind = "folder" if key == "topk_dir" else "file"
            raise FileNotFoundError(
                f"config key 'dataset.release.{key}' names the {kind} {path}, which does not exist: "
                f"point dataset.path at the release folder and dataset.release.{key} at a {kind} inside it "
                f"(or set it to null)"
            )
        out[key] = path
    return out


def _first_per_id(ids: pd.Series, texts: pd.Series, what: str, problems: InputProblems):
    """One text per id (the first in file order); count ids whose records carry different texts."""
    frame = pd.DataFrame({"id": ids, "text": texts})
    varying = int((frame.groupby("id", sort=False)["text"].nunique() > 1).sum())
    problems.note(
        f"{what} that differ between records of one id (kept the first; per-pair texts in pair_profiles)",
        varying,
    )
    first = frame.drop_duplicates("id", keep="first")
    return first["id"], first["text"]


def _merge_profiles(
    from_ratings: pd.DataFrame, from_file: pd.DataFrame | None, kind: str, problems
) -> pd.DataFrame:
    """Rating-file texts win (they are the exact inputs paired with ratings and carry the average);
    the profile file adds the ids the rating files lack."""
    if from_file is None:
        return from_ratings
    if len(from_ratings):
        both = from_file.merge(from_ratings[["id", "profile"]], on="id", suffixes=("", "_r"))
        problems.note(
            f"{kind} profiles whose profile-file text differs from the rating-file text (kept the "
            "rating file's)",
            int((both["profile"] != both["profile_r"]).sum()),
        )
    extra = from_file[~from_file["id"].isin(from_ratings["id"])].assign(source="profile_file")
    return (
        pd.concat([from_ratings, extra], ignore_index=True)
        if len(from_ratings)
        else extra.reset_index(drop=True)
    )


def load_release(cfg, problems: InputProblems) -> Dataset:
    """Load an EXP3RT release folder named by a ``dataset`` config (loader ``exp3rt_release``).

    Interactions come from the rating files named by ``release.rating_train/valid/test`` (canonical
    columns plus ``_line``, the line where the record starts in its own file; the release has no review
    text). Extras:

    - ``split_labels``: ``user_id, item_id, split`` (train/valid/test) for ``split.strategy=predefined``
    - ``user_profiles`` / ``item_profiles``: ``id, profile, likes, dislikes, average, source`` — one row
      per id, from the rating files' personas/synopses (``source=rating_file``) and the profile files
      for the ids the rating files lack (``source=profile_file``)
    - ``pair_profiles``: ``user_id, item_id, split, user_profile, item_profile, item_description`` as
      each record gave them (the release varies an item's synopsis and description per target user)
    - ``rationales``: ``user_id, item_id, split, rationale`` when any rating file carries rationales
    - ``user_profile_sft`` / ``item_profile_sft``: see :func:`read_profile_sft`
    - ``topk_train`` / ``topk_test``: LightGCN implicit interactions in original ids (:func:`read_topk`)
    """

    rating_keys = [f"rating_{s}" for s in SPLITS]
    if not any(cfg.release.get(k) for k in rating_keys):
        raise ConfigError(
            "loader 'exp3rt_release' needs at least one rating file: set dataset.release.rating_train, "
            "rating_valid or rating_test"
        )
    if cfg.require_review:
        raise ConfigError(
            "config key 'dataset.require_review' is true, but EXP3RT release rating files carry no review "
            "text: set dataset.require_review=false"
        )
    files = _configured(cfg)
    scale = scale_of(cfg)

    # ratings, one frame per split; a pair in two split files would leak between splits
    frames = []
    first_seen: dict[tuple[str, str], tuple[str, int]] = {}
    for split in SPLITS:
        key = f"rating_{split}"
        if key not in files:
            continue
        df = read_rating_file(files[key], scale, problems)
        keep = []
        for uid, iid, line in zip(df["user_id"], df["item_id"], df["_line"], strict=True):
            prev = first_seen.get((uid, iid))
            if prev is not None and prev[0] != split:
                problems.bad(
                    files[key],
                    int(line),
                    "user_id,item_id",
                    f"pair (user {uid!r}, item {iid!r}) is also in the {prev[0]} file "
                    f"(line {prev[1]} of {files[f'rating_{prev[0]}'].name}); a pair must belong to one split",
                    kind="pair in two split files",
                )
                keep.append(False)
                continue
            first_seen.setdefault((uid, iid), (split, int(line)))
            keep.append(True)
        problems.inputs[str(files[key])]["kept"] -= keep.count(False)  # skipped after reading
        frames.append(df[pd.Series(keep, index=df.index, dtype=bool)].assign(split=split))
    ratings = pd.concat(frames, ignore_index=True)

    interactions = pd.DataFrame(
        {
            "user_id": ratings["user_id"],
            "item_id": ratings["item_id"],
            "rating": ratings["rating"],
            "review": pd.array([None] * len(ratings), dtype="string"),
            "summary": pd.array([None] * len(ratings), dtype="string"),
            "timestamp": pd.array([None] * len(ratings), dtype="Int64"),
            "helpful_votes": pd.array([0] * len(ratings), dtype="Int64"),
            "_line": ratings["_line"],
        }
    )
    extras: dict[str, pd.DataFrame] = {
        "split_labels": ratings[["user_id", "item_id", "split"]]
        .drop_duplicates(["user_id", "item_id"])
        .reset_index(drop=True),
        "pair_profiles": ratings[
            ["user_id", "item_id", "split", "user_profile", "item_profile", "item_description"]
        ].reset_index(drop=True),
    }
    if ratings["rationale"].notna().any():
        extras["rationales"] = ratings.loc[
            ratings["rationale"].notna(), ["user_id", "item_id", "split", "rationale"]
        ].reset_index(drop=True)

    # items: one row per item from its first description
    item_ids, descs = _first_per_id(
        ratings["item_id"], ratings["item_description"], "item descriptions", problems
    )
    parsed = [parse_item_description(d) for d in descs]
    items = pd.DataFrame(
        {
            "item_id": item_ids.to_numpy(),
            "title": [p["title"] for p in parsed],
            "description": [p["description"] for p in parsed],
            "categories": [p["categories"] for p in parsed],
            "extra": [json.dumps(p["extra"], ensure_ascii=False, sort_keys=True) for p in parsed],
        }
    )

    for kind, id_col, text_col in (("user", "user_id", "user_profile"), ("item", "item_id", "item_profile")):
        ids, texts = _first_per_id(ratings[id_col], ratings[text_col], f"{kind} profiles", problems)
        from_ratings = profile_table(ids, texts, source="rating_file")
        file_key = f"{kind}_profiles"
        from_file = read_profiles(files[file_key], kind, problems) if file_key in files else None
        extras[file_key] = _merge_profiles(from_ratings, from_file, kind, problems)

    for key in ("user_profile_sft", "item_profile_sft"):
        if key in files:
            extras[key] = read_profile_sft(files[key], problems)
    if "topk_dir" in files:
        topk = read_topk(files["topk_dir"], problems)
        extras["topk_train"], extras["topk_test"] = topk.train, topk.test

    return Dataset(
        name=str(cfg.name),
        domain=str(cfg.domain),
        scale=scale,
        interactions=interactions,
        items=items,
        synthetic=False,
        extras=extras,
    )
