"""Generic ratings tables — CSV, TSV, JSON lines, Parquet — mapped onto the canonical columns.

``dataset.fields`` maps a canonical field to a source column, e.g. RecBole's atomic files
(``user_id:token``, ``rating:float``, ...). A canonical field left out of the mapping is read from a
same-named column when there is one. user_id and item_id become strings (an integral float id such as
``12.0`` becomes ``"12"``).

Line numbers in errors are physical lines, header counted (CSV/TSV; a record spanning several lines is
named by its first line), lines (JSONL), or row index + 1 (Parquet). A mapped column that the header
lacks is a configuration mistake and always raises, naming the columns that exist.

TSV is read without quote handling (tab-separated exports such as RecBole's and MovieLens' do not
quote, and a stray ``"`` must not swallow the lines after it); CSV follows the usual double-quote
rules. ``dataset.encoding`` applies to CSV/TSV/JSONL (Parquet strings are UTF-8 by definition).

An optional items table (``dataset.meta_path``, format by its extension or else ``dataset.format``)
maps ``item_fields`` onto item_id, title, description, categories, extra; its unmapped columns go into
``extra`` as JSON. Categories: a list is kept; text is read as a JSON list (``[...]``), split on
whitespace for RecBole ``:token_seq`` columns, else split on ``|``.
"""

from __future__ import annotations

import csv
import math
import re
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import orjson
import pandas as pd
import pyarrow as pa

from exp3rt.config import ConfigError
from exp3rt.data.amazon import INTERACTIONS_WITH_LINE, to_frame
from exp3rt.data.files import require_file
from exp3rt.data.problems import DataError, InputProblems
from exp3rt.data.schema import Dataset, RatingScale, scale_of
from exp3rt.data.textio import iter_line_blocks, parse_json_line

FORMAT_BY_EXTENSION = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".inter": "tsv",  # RecBole atomic files
    ".item": "tsv",
    ".user": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
FORMATS = ("csv", "tsv", "jsonl", "parquet")
INTERACTION_FIELDS = ("user_id", "item_id", "rating", "review", "summary", "timestamp", "helpful_votes")
REQUIRED_FIELDS = ("user_id", "item_id", "rating")
ITEM_FIELDS = ("item_id", "title", "description", "categories", "extra")
_VOTE_SEP = re.compile(r"^\s*\d{1,3}(,\d{3})+\s*$")


def load_tabular(cfg, problems: InputProblems) -> Dataset:

    scale = scale_of(cfg)
    path = str(require_file(cfg.path, "dataset.path", cfg))
    if cfg.meta_path:
        require_file(cfg.meta_path, "dataset.meta_path", cfg)
    fmt = resolve_format(path, str(cfg.format), "dataset.format")
    inter = _read_interactions(cfg, path, fmt, scale, problems)
    item_ids = pd.unique(inter["item_id"]).tolist() if len(inter) else []
    if cfg.meta_path:
        meta_path = str(cfg.meta_path)
        meta_fmt = resolve_format(meta_path, str(cfg.format), "dataset.format (for dataset.meta_path)")
        items = _read_items(cfg, meta_path, meta_fmt, item_ids, problems)
    else:
        n = len(item_ids)
        items = pd.DataFrame(
            {
                "item_id": item_ids,
                "title": [None] * n,
                "description": [None] * n,
                "categories": [[] for _ in range(n)],
                "extra": ["{}"] * n,
            }
        )
    return Dataset(name=cfg.name, domain=cfg.domain, scale=scale, interactions=inter, items=items)


def resolve_format(path: str, fmt: str, key: str) -> str:
    """``auto`` -> by extension (a ``.gz`` suffix is looked through); else the named format."""
    if fmt != "auto":  # one of FORMATS (config.TabularFormat)
        return fmt
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    ext = suffixes[-1] if suffixes else ""
    if ext not in FORMAT_BY_EXTENSION:
        raise ConfigError(
            f"config key '{key}': cannot tell the format of {path!r} from its extension {ext!r}; "
            f"set it to one of {', '.join(FORMATS)}"
        )
    return FORMAT_BY_EXTENSION[ext]


# ------------------------------------------------------------------------------------------ records


class _Feed:
    """The decoded lines of a delimited file, fed to :class:`csv.reader`, with the ``(line, text)`` of
    the record being read kept in ``record`` so a runaway record can be read again from its second line
    (:meth:`push_back`). A line that does not decode is bad input, counted as it is read."""

    def __init__(self, path: str, encoding: str, problems: InputProblems):
        self.path, self.encoding, self.problems = path, encoding, problems
        self.read = 0  # physical lines read from the file
        self.record: list[tuple[int, str]] = []
        self.pending: deque = deque()
        self._lines = self._decoded()

    def _decoded(self):
        path, enc, problems = self.path, self.encoding, self.problems
        for first, block in iter_line_blocks(path, problems=problems):
            self.read += len(block)
            for n, raw in enumerate(block, first):
                try:
                    text = raw.decode(enc)
                except UnicodeDecodeError as ue:
                    problems.bad(path, n, None, f"bad encoding: bytes at offset {ue.start} are not "
                                                f"valid {enc}",
                                 kind="bad encoding")  # fmt: skip
                    continue
                yield n, text + "\n"

    def __iter__(self):
        return self._texts()

    def _texts(self):
        # a generator rather than __next__: resuming it is cheaper than a method call per line
        record, pending, lines = self.record, self.pending, self._lines
        while True:
            if pending:
                item = pending.popleft()
            else:
                item = next(lines, None)
                if item is None:
                    return
            record.append(item)
            yield item[1]

    def start(self) -> None:
        self.record.clear()

    def push_back(self, lines: list[tuple[int, str]]) -> None:
        self.pending.extendleft(reversed(lines))


class _Source:
    """Rows of one file as ``(line, get)`` where ``get(column)`` returns the raw value or None."""

    def __init__(self, path: str, fmt: str, cfg, problems: InputProblems):
        self.path, self.fmt, self.problems = path, fmt, problems
        self.encoding = str(cfg.encoding)
        self.columns: list[str] | None = None  # None for JSONL: keys are looked up per record
        self.header_line: int | None = None
        self.span = 1  # physical lines of the row just yielded
        self.ignored: dict[str, int] = {}  # lines neither kept nor skipped: header, blank lines
        self.feed: _Feed | None = None
        self.n_read = 0  # JSONL lines / Parquet rows (CSV/TSV: feed.read)
        self.single_line: tuple[str, ...] = ()  # columns that never hold a line break (ids, numbers)
        self._rows: Iterator
        if fmt in ("csv", "tsv"):
            self._rows = self._delimited(cfg)
        elif fmt == "jsonl":
            self._rows = self._jsonl()
        else:
            self._rows = self._parquet()

    def __iter__(self):
        return self._rows

    def require(self, column: str, field: str) -> None:
        """A mapped column that the file lacks is a configuration mistake: always raise."""
        if self.columns is not None and column not in self.columns:
            raise DataError(
                self.path,
                self.header_line,
                column,
                f"column not found for canonical field '{field}'; the file has columns {self.columns} "
                f"(map it with dataset.fields / dataset.item_fields)",
            )

    # -- CSV / TSV
    def _delimited(self, cfg):
        sep = cfg.separator if cfg.separator is not None else ("," if self.fmt == "csv" else "\t")
        sep = sep.encode().decode("unicode_escape") if sep.startswith("\\") else sep  # "\t" typed in YAML
        quoting = csv.QUOTE_MINIMAL if self.fmt == "csv" else csv.QUOTE_NONE
        feed = _Feed(self.path, self.encoding, self.problems)
        self.feed = feed

        def make_reader():  # a fresh reader after a runaway record (its line generator may have ended)
            return csv.reader(iter(feed), delimiter=sep, quoting=quoting)

        reader = make_reader()
        if cfg.header:
            feed.start()
            header = next(reader, None)
            self.header_line = feed.record[0][0] if feed.record else None
            self.ignored["header"] = len(feed.record)
            if header is None:  # an empty file: no columns to check and no rows (an empty dataset is
                self.columns = None  # reported as such by load_dataset, with the lines read)
                return iter(())
            self.columns = [c.strip() for c in header]
        else:
            if not cfg.column_names:
                raise ConfigError("config key 'dataset.column_names' is required when dataset.header=false")
            self.columns = [str(c) for c in cfg.column_names]
        index = {c: i for i, c in enumerate(self.columns)}
        width = len(self.columns)
        return self._delimited_rows(reader, make_reader, feed, index, width)

    def _delimited_rows(self, reader, make_reader, feed, index, width):
        """Rows with their first line; ``self.span`` is the number of physical lines of the last row.

        A record over several lines (a quoted field with line breaks) that has the wrong number of
        columns, does not parse, or has a line break in a column that holds one value (an id, a
        rating: ``self.single_line``) ran away over an unclosed quote: its first line is bad input and
        the lines after it are read again, so a stray quote costs one line, not the rest of the file."""
        n_blank = 0
        single = [index[c] for c in self.single_line if c in index]
        while True:
            feed.start()
            error = None
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                row, error = None, e
            if not feed.record:  # only lines with bad encoding (counted as they were read)
                continue
            line, last = feed.record[0][0], feed.record[-1][0]
            self.span = len(feed.record)
            if row is not None and (not row or (len(row) == 1 and not row[0].strip())):
                n_blank += 1
                continue
            wrong = error is not None or len(row) != width
            if self.span > 1 and (wrong or any(i < len(row) and "\n" in row[i] for i in single)):
                what = f"does not parse ({error})" if error else (
                    f"has {len(row)} columns instead of {width}" if len(row) != width
                    else "has a line break in an id or number column")  # fmt: skip
                self.problems.bad(
                    self.path, line, None,
                    f"unclosed quote: the record starting on line {line} runs over lines {line}-{last} and "
                    f"{what}",
                    kind="unclosed quote (the line is skipped, the lines after it are read again)",
                )  # fmt: skip
                feed.push_back(feed.record[1:])  # a copy: start() clears the record
                reader = make_reader()
                continue
            if error is not None:
                self.problems.bad(self.path, line, None, f"unparsable line: {error}", kind="unparsable line")
                continue
            if len(row) != width:
                self.problems.bad(
                    self.path,
                    line,
                    None,
                    f"expected {width} columns, found {len(row)}",
                    kind="wrong column count",
                )
                continue
            yield line, (lambda col, row=row: row[index[col]] if col in index else None)
        self.ignored["blank_lines"] = n_blank
        self.problems.note(f"{Path(self.path).name}: blank lines ignored", n_blank)

    # -- JSON lines
    def _jsonl(self):
        n_blank = 0
        for first, block in iter_line_blocks(self.path, problems=self.problems):
            self.n_read += len(block)
            for n, raw in enumerate(block, first):
                obj, problem = parse_json_line(raw, self.encoding)
                if problem is not None:
                    if not raw.strip():
                        n_blank += 1
                        continue
                    reason = problem[1]
                    kind = "bad encoding" if reason.startswith("bad enc") else "unparsable line"
                    self.problems.bad(self.path, n, None, reason, kind=kind)
                    continue
                if type(obj) is not dict:
                    self.problems.bad(
                        self.path,
                        n,
                        None,
                        f"not a JSON object (got {type(obj).__name__})",
                        kind="unparsable line",
                    )
                    continue
                yield n, obj.get
        self.ignored["blank_lines"] = n_blank
        self.problems.note(f"{Path(self.path).name}: blank lines ignored", n_blank)

    # -- Parquet
    def _parquet(self):
        import pyarrow.parquet as pq

        table = pq.read_table(self.path)
        self.n_read = table.num_rows
        self.columns = list(table.column_names)
        self.header_line = None
        return self._parquet_rows(table)

    def _parquet_rows(self, table):
        # a generator: runs on first iteration, after the caller has set ``wanted``
        cols = {name: table[name].to_pylist() for name in self.wanted} if self.wanted else {}
        for i in range(table.num_rows):
            yield i + 1, (lambda col, i=i: cols[col][i] if col in cols else None)

    wanted: list[str] = []

    @property
    def read(self) -> int:
        return self.feed.read if self.feed is not None else self.n_read

    @property
    def unit(self) -> str:
        return "rows" if self.fmt == "parquet" else "lines"

    def account(self, kept: int) -> None:
        self.problems.account(self.path, read=self.read, kept=kept, unit=self.unit, **self.ignored)


def _mapping(cfg_map, allowed: tuple[str, ...], key: str) -> dict[str, str]:
    mapping = {str(k): str(v) for k, v in (cfg_map or {}).items()}
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise ConfigError(
            f"config key '{key}': unknown canonical field(s) {unknown}; allowed: {list(allowed)}"
        )
    return mapping


def _resolve_columns(source: _Source, mapping: dict[str, str], fields, required) -> dict[str, str]:
    """canonical -> source column, for the fields this file can provide."""
    out = {}
    for field in fields:
        if field in mapping:
            source.require(mapping[field], field)
            out[field] = mapping[field]
        elif source.columns is None or field in source.columns:
            out[field] = field  # same-named column (JSONL: looked up per record)
        elif field in required:
            source.require(field, field)
    return out


# ------------------------------------------------------------------------------------- conversions


def _blank(v) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v))


def _as_id(v) -> str | None:
    if _blank(v):
        return None
    if isinstance(v, bool):
        return None
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else str(v)
    return v if isinstance(v, str) else str(v)


def _as_float(v) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _as_int(v) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    try:
        return int(v)
    except (TypeError, ValueError):
        f = _as_float(v)
        return int(f) if f is not None and f.is_integer() else None


def _read_interactions(cfg, path, fmt, scale: RatingScale, problems) -> pd.DataFrame:
    lo, hi = scale.min, scale.max
    grid = scale.level_set()
    mapping = _mapping(cfg.fields, INTERACTION_FIELDS, "dataset.fields")
    source = _Source(path, fmt, cfg, problems)
    cols = _resolve_columns(source, mapping, INTERACTION_FIELDS, REQUIRED_FIELDS)
    source.wanted = list(cols.values())
    source.single_line = tuple(cols[f] for f in ("user_id", "item_id", "rating", "timestamp", "helpful_votes")
                               if f in cols)  # fmt: skip
    require_review = bool(cfg.require_review)
    c_user, c_item, c_rating = cols["user_id"], cols["item_id"], cols["rating"]
    c_review, c_summary = cols.get("review"), cols.get("summary")
    c_time, c_votes = cols.get("timestamp"), cols.get("helpful_votes")
    out = {name: [] for name in INTERACTIONS_WITH_LINE.names}

    def bad(*args, **kw):  # a skipped record costs every physical line it spans
        problems.bad(*args, lines=source.span, **kw)

    n_sep = 0
    kept_lines = 0
    for line, get in source:
        user = _as_id(get(c_user))
        if user is None:
            bad(path, line, c_user, "missing or empty user id", kind=f"{c_user}: missing or empty")
            continue
        item = _as_id(get(c_item))
        if item is None:
            bad(path, line, c_item, "missing or empty item id", kind=f"{c_item}: missing or empty")
            continue
        raw = get(c_rating)
        if _blank(raw):
            bad(path, line, c_rating, "missing rating", kind=f"{c_rating}: missing")
            continue
        rating = _as_float(raw)
        if rating is None:
            bad(path, line, c_rating, f"rating {raw!r} is not a number", kind=f"{c_rating}: not a number")
            continue
        if not lo <= rating <= hi:
            bad(
                path,
                line,
                c_rating,
                f"rating {rating:g} is outside the scale [{lo:g}, {hi:g}] (dataset.scale)",
                kind=f"{c_rating}: outside the rating scale",
            )
            continue
        if rating not in grid:  # fast path: the usual ratings are exactly a level
            off = scale.off_grid(rating)
            if off is not None:
                bad(path, line, c_rating, off, kind=f"{c_rating}: not on the scale's steps")
                continue
        review = get(c_review) if c_review else None
        if _blank(review):
            if require_review:
                col = c_review or "review"
                bad(path, line, col, "missing or empty review text", kind=f"{col}: missing or empty")
                continue
            review = None
        elif not isinstance(review, str):
            review = str(review)
        summary = get(c_summary) if c_summary else None
        summary = None if _blank(summary) else str(summary)
        ts = get(c_time) if c_time else None
        if _blank(ts):
            ts = None
        else:
            raw_ts, ts = ts, _as_int(ts)
            if ts is None:
                bad(path, line, c_time, f"{raw_ts!r} is not a unix time", kind=f"{c_time}: not an integer")
                continue
        votes = get(c_votes) if c_votes else None
        if _blank(votes):
            votes = 0
        else:
            raw_votes, votes = votes, _as_int(votes)
            if votes is None and isinstance(raw_votes, str) and _VOTE_SEP.match(raw_votes):
                votes = int(raw_votes.replace(",", ""))
                n_sep += 1
            if votes is None or votes < 0:
                bad(path, line, c_votes, f"{raw_votes!r} is not a vote count", kind=f"{c_votes}: not a count")
                continue
        out["user_id"].append(user)
        out["item_id"].append(item)
        out["rating"].append(rating)
        out["review"].append(review)
        out["summary"].append(summary)
        out["timestamp"].append(ts)
        out["helpful_votes"].append(votes)
        out["_line"].append(line)
        kept_lines += source.span
    problems.note("helpful_votes: thousands separator stripped (e.g. '1,234' -> 1234)", n_sep)
    source.account(kept_lines)
    table = pa.table(
        [pa.array(out[f.name], f.type) for f in INTERACTIONS_WITH_LINE], schema=INTERACTIONS_WITH_LINE
    )
    return to_frame(table)


# ------------------------------------------------------------------------------------------- items


def _categories(value, column: str) -> list[str]:
    if _blank(value):
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if not _blank(v)]
    text = str(value).strip()
    if text.startswith("["):
        try:
            parsed = orjson.loads(text)
            if isinstance(parsed, list):
                return [str(v) for v in parsed if not _blank(v)]
        except orjson.JSONDecodeError:
            pass
    parts = text.split() if column.endswith(":token_seq") else text.split("|")
    return [p.strip() for p in parts if p.strip()]


def _read_items(cfg, path, fmt, item_ids, problems) -> pd.DataFrame:
    mapping = _mapping(cfg.item_fields, ITEM_FIELDS, "dataset.item_fields")
    source = _Source(path, fmt, cfg, problems)
    cols = _resolve_columns(source, mapping, ITEM_FIELDS, ("item_id",))
    if source.columns is None and "extra" not in mapping:
        del cols["extra"]  # JSONL: unmapped keys make up extra (no same-named default)
    used = set(cols.values())
    rest = [c for c in source.columns if c not in used] if source.columns is not None else None
    source.wanted = list(source.columns) if source.columns is not None else []
    c_item = cols["item_id"]
    wanted = set(item_ids)
    found: dict[str, dict] = {}
    seen: set[str] = set()
    source.single_line = (c_item,)
    n_dup = n_unrated = 0
    lines = {"kept": 0, "duplicate_item_rows": 0, "items_without_interactions": 0}
    for line, get in source:
        item = _as_id(get(c_item))
        if item is None:
            problems.bad(
                path, line, c_item, "missing or empty item id", kind=f"items {c_item}: missing or empty",
                lines=source.span,
            )  # fmt: skip
            continue
        if item in seen:
            n_dup += 1
            lines["duplicate_item_rows"] += source.span
            continue
        seen.add(item)
        if item not in wanted:
            n_unrated += 1
            lines["items_without_interactions"] += source.span
            continue
        lines["kept"] += source.span
        title = get(cols["title"]) if "title" in cols else None
        desc = get(cols["description"]) if "description" in cols else None
        cats = get(cols["categories"]) if "categories" in cols else None
        if "extra" in cols:
            extra_val = get(cols["extra"])
            extra = extra_val if isinstance(extra_val, str) and extra_val.strip() else "{}"
        else:
            if rest is None:  # JSONL: every key not mapped
                rec = get.__self__  # the record dict
                keep = {k: v for k, v in rec.items() if k not in used}
            else:
                keep = {c: get(c) for c in rest}
            extra = orjson.dumps({k: v for k, v in keep.items() if not _blank(v)}, default=str).decode()
        found[item] = {
            "title": None if _blank(title) else str(title).strip(),
            "description": None if _blank(desc) else str(desc).strip(),
            "categories": _categories(cats, cols.get("categories", "")),
            "extra": extra,
        }
    empty = {"title": None, "description": None, "categories": [], "extra": "{}"}
    rows = [{"item_id": i, **found.get(i, empty)} for i in item_ids]
    problems.note(f"{Path(path).name}: duplicate item rows ignored (first kept)", n_dup)
    problems.note(f"{Path(path).name}: items without interactions not kept", n_unrated)
    kept = lines.pop("kept")
    source.ignored.update(lines)
    source.account(kept)
    problems.note("items without metadata (title/description null)", len(item_ids) - len(found))
    if not rows:
        return pd.DataFrame(columns=list(ITEM_FIELDS))
    return pd.DataFrame(rows, columns=list(ITEM_FIELDS))
