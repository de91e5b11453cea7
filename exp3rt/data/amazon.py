"""Amazon Review Data (2018, UCSD / McAuley): review JSON lines plus optional item metadata.

Review fields mapped: ``reviewerID``→user_id, ``asin``→item_id, ``overall``→rating,
``reviewText``→review, ``summary``, ``unixReviewTime``→timestamp, ``vote``→helpful_votes (a string
with thousands separators, e.g. ``"1,234"``; absent means 0). ``verified``, ``style``, ``image``,
``reviewTime`` and ``reviewerName`` are not kept.

Quirks of the real files, each counted in the data report:

* 5-core files repeat one review (same reviewer, text and time) under each product variant (a
  different ``asin``). ``dataset.variants=keep_one`` keeps the first copy in file order;
  ``keep_all`` keeps every copy. Only reviews with text are grouped: two text-less ratings by one
  user at one time are not evidence of a variant copy.
* Metadata repeats ``asin`` rows (first kept); ``title`` is often HTML debris such as
  ``<span class="a-size-medium a-color-secondary"`` (tags and entities stripped; a title that is
  nothing but debris becomes null); ``description`` is a list of HTML strings (joined into plain
  text, one paragraph per line); ``price`` is sometimes page CSS (dropped).

Speed: the review file is read in binary blocks and parsed line by line with orjson straight from
UTF-8 bytes into per-column lists, turned into Arrow arrays every ``CHUNK_ROWS`` rows; variant
copies are dropped while reading, and the final pandas frame wraps the Arrow strings without a copy.
"""

from __future__ import annotations

import bisect
import html
import re

import orjson
import pandas as pd
import pyarrow as pa

from exp3rt.config import VariantPolicy
from exp3rt.data.files import require_file
from exp3rt.data.problems import InputProblems
from exp3rt.data.schema import INTERACTION_SCHEMA, Dataset, RatingScale, scale_of
from exp3rt.data.textio import bad_json_reason, is_utf8, iter_line_blocks

CHUNK_ROWS = 20_000  # small enough that the Python lists and Arrow builders stay small

INTERACTIONS_WITH_LINE = INTERACTION_SCHEMA.append(pa.field("_line", pa.int64()))

# Kinds under which lenient-mode skips are counted (the reason text itself carries the details).
VARIANT_NOTE = "variant copies removed (same reviewer, text and time under another asin; variants=keep_one)"
EXACT_DUPLICATE_NOTE = (
    "exact duplicate reviews removed (same reviewer, asin, rating, text and time as an earlier line; "
    "first kept; variants=keep_one)"
)
K_BAD_JSON = "unparsable line (bad JSON or not an object)"
K_BAD_ENCODING = "bad encoding"
K_NO_USER = "reviewerID: missing or empty"
K_NO_ITEM = "asin: missing or empty"
K_NO_RATING = "overall: missing"
K_RATING_NAN = "overall: not a number"
K_RATING_SCALE = "overall: outside the rating scale"
K_RATING_STEP = "overall: not on the scale's steps"
K_NO_REVIEW = "reviewText: missing or empty (dataset.require_review=true)"
K_REVIEW_TYPE = "reviewText: not a string"
K_BAD_TIME = "unixReviewTime: not an integer"
K_BAD_VOTE = "vote: not a count"


def load_amazon2018(cfg, problems: InputProblems) -> Dataset:

    scale = scale_of(cfg)
    require_file(cfg.path, "dataset.path", cfg)
    if cfg.meta_path:
        require_file(cfg.meta_path, "dataset.meta_path", cfg)
    table = read_reviews(
        str(cfg.path),
        problems,
        scale_min=scale.min,
        scale_max=scale.max,
        scale_step=scale.step,
        require_review=bool(cfg.require_review),
        encoding=str(cfg.encoding),
        variants=VariantPolicy(cfg.variants),
    )
    inter = to_frame(table)
    del table
    item_ids = pd.unique(inter["item_id"]).tolist() if len(inter) else []
    if cfg.meta_path:
        items = read_metadata(str(cfg.meta_path), item_ids, problems, encoding=str(cfg.encoding))
    else:
        items = _bare_items(item_ids)
    return Dataset(name=cfg.name, domain=cfg.domain, scale=scale, interactions=inter, items=items)


# --------------------------------------------------------------------------------------------- reviews


def read_reviews(
    path: str,
    problems: InputProblems,
    *,
    scale_min: float,
    scale_max: float,
    scale_step: float = 1.0,
    require_review: bool = True,
    encoding: str = "utf-8",
    variants: VariantPolicy = VariantPolicy.keep_all,
) -> pa.Table:
    """Parse a review file into canonical columns plus ``_line``; bad lines go to ``problems``.

    ``variants=keep_one`` drops later copies of a review (same user, review text and time) that the
    5-core files repeat under each product variant, as the file is read: rows are never copied
    afterwards (a filter over a finished table would double its memory for a moment). A row is a
    copy when a 64-bit hash of (user, time, text) matches an earlier row *and* the three values are
    equal (checked, so a hash collision can never drop a distinct review). Rows without text are
    never grouped: two text-less ratings by one user at one time are no evidence of a variant. A copy
    under the *same* asin with the same rating is an exact duplicate, not a variant: it is removed and
    counted under its own name; with another rating it is kept for ``dataset.duplicates`` to resolve.

    Every line is accounted for in ``problems`` (kept, skipped by reason, or ignored: blank lines,
    variant copies, exact duplicates). A rating off the scale's steps (3.5 on a step-1 scale) is bad input.
    """
    scale = RatingScale(scale_min, scale_max, scale_step)
    grid = scale.level_set()  # fast path: the usual ratings are exactly a level
    loads = orjson.loads
    utf8 = is_utf8(encoding)
    bad = problems.bad
    users: list = []
    items: list = []
    ratings: list = []
    reviews: list = []
    summaries: list = []
    times: list = []
    votes: list = []
    line_nos: list = []
    tables: list[pa.Table] = []
    starts: list[int] = []  # global row index of each flushed table's first row
    n_sep = n_blank = n_summary = n_copies = n_exact = n_read = 0
    keep_one = VariantPolicy(variants) == VariantPolicy.keep_one
    first_of: dict[int, int] = {}  # hash(user, time, text) -> global row index of the first copy
    variant_items: dict[
        int, set
    ] = {}  # first copy's row index -> (asin, rating) of its dropped variant copies
    n_rows = 0  # rows kept so far (global index of the next row)

    def row_values(idx: int) -> tuple:
        """(user, time, text, item, rating) of an earlier kept row, from the open lists or a flushed table."""
        if idx >= n_rows - len(users):
            j = idx - (n_rows - len(users))
            return users[j], times[j], reviews[j], items[j], ratings[j]
        c = bisect.bisect_right(starts, idx) - 1
        t, j = tables[c], idx - starts[c]
        return tuple(t[name][j].as_py() for name in ("user_id", "timestamp", "review", "item_id", "rating"))

    def flush() -> None:
        starts.append(n_rows - len(users))
        tables.append(
            pa.table(
                [
                    pa.array(users, pa.string()),
                    pa.array(items, pa.string()),
                    pa.array(ratings, pa.float64()),
                    pa.array(reviews, pa.string()),
                    pa.array(summaries, pa.string()),
                    pa.array(times, pa.int64()),
                    pa.array(votes, pa.int64()),
                    pa.array(line_nos, pa.int64()),
                ],
                schema=INTERACTIONS_WITH_LINE,
            )
        )
        for col in (users, items, ratings, reviews, summaries, times, votes, line_nos):
            col.clear()

    for first, lines in iter_line_blocks(path, problems=problems):
        n_read += len(lines)
        for line_no, raw in enumerate(lines, first):
            # -- parse: orjson reads UTF-8 bytes directly; any failure is sorted out on the slow path
            try:
                rec = loads(raw) if utf8 else loads(raw.decode(encoding))
            except (orjson.JSONDecodeError, UnicodeDecodeError):
                if not raw.strip():
                    n_blank += 1
                    continue
                reason = bad_json_reason(raw, encoding)
                bad(
                    path,
                    line_no,
                    None,
                    reason,
                    kind=K_BAD_ENCODING if reason.startswith("bad enc") else K_BAD_JSON,
                )
                continue
            if type(rec) is not dict:
                bad(path, line_no, None, f"not a JSON object (got {type(rec).__name__})", kind=K_BAD_JSON)
                continue
            # -- required ids
            user = rec.get("reviewerID")
            if type(user) is not str or not user:
                user = _id_or_none(user)
                if user is None:
                    bad(path, line_no, "reviewerID", "missing or empty reviewer id", kind=K_NO_USER)
                    continue
            item = rec.get("asin")
            if type(item) is not str or not item:
                item = _id_or_none(item)
                if item is None:
                    bad(path, line_no, "asin", "missing or empty item id", kind=K_NO_ITEM)
                    continue
            # -- rating
            rating = rec.get("overall")
            if type(rating) is not float and type(rating) is not int:
                if rating is None:
                    bad(path, line_no, "overall", "missing rating", kind=K_NO_RATING)
                    continue
                rating = _number_or_none(rating)
                if rating is None:
                    bad(
                        path,
                        line_no,
                        "overall",
                        f"rating {rec.get('overall')!r} is not a number",
                        kind=K_RATING_NAN,
                    )
                    continue
            if not scale_min <= rating <= scale_max:  # also rejects NaN
                bad(
                    path,
                    line_no,
                    "overall",
                    f"rating {rating!r} is outside the scale [{scale_min:g}, {scale_max:g}] (dataset.scale)",
                    kind=K_RATING_SCALE,
                )
                continue
            if rating not in grid:
                off = scale.off_grid(rating)
                if off is not None:
                    bad(path, line_no, "overall", off, kind=K_RATING_STEP)
                    continue
            # -- review text
            text = rec.get("reviewText")
            if type(text) is not str or not text or text.isspace():
                if text is not None and type(text) is not str:
                    bad(
                        path,
                        line_no,
                        "reviewText",
                        f"review text is a {type(text).__name__}, not a string",
                        kind=K_REVIEW_TYPE,
                    )
                    continue
                if require_review:
                    bad(path, line_no, "reviewText", "missing or empty review text", kind=K_NO_REVIEW)
                    continue
                text = None
            # -- optional fields
            ts = rec.get("unixReviewTime")
            if ts is not None and type(ts) is not int:
                ts = _int_or_none(ts)
                if ts is None:
                    bad(
                        path,
                        line_no,
                        "unixReviewTime",
                        f"{rec.get('unixReviewTime')!r} is not a unix time",
                        kind=K_BAD_TIME,
                    )
                    continue
            vote = rec.get("vote")
            if vote is None:
                vote = 0
            elif type(vote) is not int:
                try:
                    vote = int(vote)
                except (TypeError, ValueError):
                    fixed = _vote_with_separators(vote)
                    if fixed is None:
                        bad(path, line_no, "vote", f"{vote!r} is not a vote count", kind=K_BAD_VOTE)
                        continue
                    vote = fixed
                    n_sep += 1
                if vote < 0:
                    bad(path, line_no, "vote", f"{vote!r} is a negative vote count", kind=K_BAD_VOTE)
                    continue
            summary = rec.get("summary")
            if summary is not None and type(summary) is not str:
                summary = None
                n_summary += 1
            if keep_one and text is not None:
                key = hash((user, ts, text))
                first_idx = first_of.get(key)
                if first_idx is None:
                    first_of[key] = n_rows
                else:
                    earlier = row_values(first_idx)
                    if earlier[:3] == (user, ts, text):
                        # the same review again: under an asin seen before with this rating (the first
                        # copy or a variant copy dropped earlier) it is an exact duplicate; under a
                        # new asin a variant copy; under the first copy's asin with another rating it
                        # is kept for dataset.duplicates
                        copies = variant_items.setdefault(first_idx, set())
                        if (item, rating) == earlier[3:] or (item, rating) in copies:
                            n_exact += 1
                            problems.note(EXACT_DUPLICATE_NOTE, file=path, line=line_no)
                            continue
                        if item != earlier[3] and all(item != c for c, _ in copies):
                            copies.add((item, rating))
                            n_copies += 1
                            continue

            users.append(user)
            items.append(item)
            ratings.append(rating)
            reviews.append(text)
            summaries.append(summary)
            times.append(ts)
            votes.append(vote)
            line_nos.append(line_no)
            n_rows += 1
        if len(users) >= CHUNK_ROWS:
            flush()
    if users or not tables:
        flush()

    problems.note("vote: thousands separator stripped (e.g. '1,234' -> 1234)", n_sep)
    problems.note("blank lines ignored", n_blank)
    problems.note(VARIANT_NOTE, n_copies)
    problems.account(path, read=n_read, kept=n_rows, blank_lines=n_blank, variant_copies=n_copies,
                     exact_duplicates=n_exact)  # fmt: skip
    problems.note("summary: not a string, set to null", n_summary)
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def to_frame(table: pa.Table) -> pd.DataFrame:
    """Arrow table -> pandas with nullable integers (string columns stay Arrow-backed, no copy)."""
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def _id_or_none(value) -> str | None:
    """Accept a non-empty string or an integer id (as text); anything else is missing."""
    if type(value) is int:
        return str(value)
    if isinstance(value, str) and value:
        return value
    return None


def _number_or_none(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int_or_none(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


_VOTE_SEP = re.compile(r"^\s*\d{1,3}(,\d{3})+\s*$")


def _vote_with_separators(value) -> int | None:
    """``"1,234"`` -> 1234; None when ``value`` is not a count written with thousands separators."""
    if isinstance(value, str) and _VOTE_SEP.match(value):
        return int(value.replace(",", ""))
    return None


# -------------------------------------------------------------------------------------------- metadata

_TAG = re.compile(r"<[A-Za-z/!][^<>]*>")  # a tag starts with a name, '/' or '!': "3 < 4" is text
_TAG_HEAD = re.compile(r"<[A-Za-z/!][^<>]*$")  # a tag cut off before its '>' (e.g. '<span class="a-size-…"')
_TAG_TAIL = re.compile(r'^[^<>]*"\s*/?>')  # the end of a tag whose start was cut off (' Magazines" />')
_SPACE = re.compile(r"[ \t\r\f\v\u00a0]+")
_PRICE = re.compile(r"^\$\s?\d[\d,]*(\.\d+)?(\s*-\s*\$\s?\d[\d,]*(\.\d+)?)?$")
EXTRA_FIELDS = ("brand", "main_cat", "price", "rank")


def clean_html(text) -> str | None:
    """Plain text from an HTML fragment: tags (also cut-off ones) removed, entities decoded,
    whitespace collapsed. Returns None when nothing but debris is left."""
    if not isinstance(text, str):
        return None
    text = _TAG_TAIL.sub(" ", text)
    text = _TAG.sub(" ", text)
    text = _TAG_HEAD.sub(" ", text)
    text = html.unescape(text)
    lines = (_SPACE.sub(" ", line).strip() for line in text.split("\n"))
    out = "\n".join(line for line in lines if line)
    return out or None


def _description(value) -> str | None:
    parts = value if isinstance(value, list) else [value]
    texts = [t for t in (clean_html(p) for p in parts) if t]
    return "\n".join(texts) if texts else None


def _categories(value) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [c for c in (clean_html(v) for v in value) if c]


def read_metadata(
    path: str, item_ids: list[str], problems: InputProblems, encoding: str = "utf-8"
) -> pd.DataFrame:
    """Item rows for ``item_ids`` (in that order) from an Amazon metadata file.

    Every line is parsed (bad lines are reported like review lines), duplicate ``asin`` rows keep the
    first, and only the items that have interactions are cleaned and kept.
    """
    wanted = set(item_ids)
    seen: set[str] = set()
    found: dict[str, dict] = {}
    n_dup = n_blank = n_read = 0
    utf8 = is_utf8(encoding)
    for first, lines in iter_line_blocks(path, problems=problems):
        n_read += len(lines)
        for line_no, raw in enumerate(lines, first):
            try:
                rec = orjson.loads(raw) if utf8 else orjson.loads(raw.decode(encoding))
            except (orjson.JSONDecodeError, UnicodeDecodeError):
                if not raw.strip():
                    n_blank += 1
                    continue
                reason = bad_json_reason(raw, encoding)
                kind = "metadata: " + (K_BAD_ENCODING if reason.startswith("bad enc") else K_BAD_JSON)
                problems.bad(path, line_no, None, reason, kind=kind)
                continue
            if type(rec) is not dict:
                problems.bad(
                    path,
                    line_no,
                    None,
                    f"not a JSON object (got {type(rec).__name__})",
                    kind="metadata: " + K_BAD_JSON,
                )
                continue
            asin = _id_or_none(rec.get("asin"))
            if asin is None:
                problems.bad(path, line_no, "asin", "missing or empty item id", kind="metadata: " + K_NO_ITEM)
                continue
            if asin in seen:
                n_dup += 1
                continue
            seen.add(asin)
            if asin in wanted:
                found[asin] = rec

    n_debris = n_price = 0
    rows = {"item_id": [], "title": [], "description": [], "categories": [], "extra": []}
    for asin in item_ids:
        rec = found.get(asin)
        rows["item_id"].append(asin)
        if rec is None:
            rows["title"].append(None)
            rows["description"].append(None)
            rows["categories"].append([])
            rows["extra"].append("{}")
            continue
        raw_title = rec.get("title")
        title = clean_html(raw_title)
        if title is None and isinstance(raw_title, str) and raw_title.strip():
            n_debris += 1
        rows["title"].append(title)
        rows["description"].append(_description(rec.get("description")))
        rows["categories"].append(_categories(rec.get("category")))
        extra = {}
        for key in EXTRA_FIELDS:
            value = rec.get(key)
            if isinstance(value, str):
                value = clean_html(value)
            elif isinstance(value, list):
                value = [v for v in (clean_html(x) for x in value) if v] or None
            if key == "price" and value is not None and not (isinstance(value, str) and _PRICE.match(value)):
                n_price += 1
                value = None
            if value not in (None, "", []):
                extra[key] = value
        rows["extra"].append(orjson.dumps(extra).decode())

    problems.note("metadata: duplicate asin rows ignored (first kept)", n_dup)
    problems.account(path, read=n_read, kept=len(seen), blank_lines=n_blank, duplicate_asin_rows=n_dup)
    problems.note("metadata: blank lines ignored", n_blank)
    problems.note("metadata: title was only HTML debris, set to null", n_debris)
    problems.note("metadata: price was not a price (page debris), dropped", n_price)
    problems.note("items without metadata (title/description null)", len(item_ids) - len(found))
    return pd.DataFrame(rows)


def _bare_items(item_ids: list[str]) -> pd.DataFrame:
    n = len(item_ids)
    return pd.DataFrame(
        {
            "item_id": item_ids,
            "title": [None] * n,
            "description": [None] * n,
            "categories": [[] for _ in range(n)],
            "extra": ["{}"] * n,
        }
    )
