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
from collections.abc import Iterator
from pathlib import Path

import orjson
import pandas as pd
import pyarrow as pa

from exp3rt.config import ConfigError
from exp3rt.data.amazon import INTERACTIONS_WITH_LINE, to_frame
from exp3rt.data.problems import DataError, InputProblems
from exp3rt.data.schema import Dataset
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
    from exp3rt.data.loaders import scale_of

    scale = scale_of(cfg)
    path = str(cfg.path)
    fmt = resolve_format(path, str(cfg.format), "dataset.format")
    inter = _read_interactions(cfg, path, fmt, scale.min, scale.max, problems)
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
    if fmt != "auto":
        if fmt not in FORMATS:
            raise ConfigError(
                f"config key '{key}': unknown format '{fmt}'; allowed: auto, {', '.join(FORMATS)}"
            )
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


class _Source:
    """Rows of one file as ``(line, get)`` where ``get(column)`` returns the raw value or None."""

    def __init__(self, path: str, fmt: str, cfg, problems: InputProblems):
        self.path, self.fmt, self.problems = path, fmt, problems
        self.encoding = str(cfg.encoding)
        self.columns: list[str] | None = None  # None for JSONL: keys are looked up per record
        self.header_line: int | None = None
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
        state = {"start": None}
        path, enc, problems = self.path, self.encoding, self.problems

        def lines():
            for first, block in iter_line_blocks(path):
                for n, raw in enumerate(block, first):
                    try:
                        text = raw.decode(enc)
                    except UnicodeDecodeError as ue:
                        problems.bad(path, n, None, f"bad encoding: bytes at offset {ue.start} are not valid {enc}",
                                     kind="bad encoding")  # fmt: skip
                        continue
                    if state["start"] is None:
                        state["start"] = n
                    yield text + "\n"

        reader = csv.reader(lines(), delimiter=sep, quoting=quoting)
        if cfg.header:
            header = next(reader, None)
            self.header_line = state["start"]
            state["start"] = None
            if header is None:
                raise DataError(
                    path, 1, None, "the file is empty (dataset.header=true expects a header line)"
                )
            self.columns = [c.strip() for c in header]
        else:
            if not cfg.column_names:
                raise ConfigError("config key 'dataset.column_names' is required when dataset.header=false")
            self.columns = [str(c) for c in cfg.column_names]
        index = {c: i for i, c in enumerate(self.columns)}
        width = len(self.columns)
        return self._delimited_rows(reader, state, index, width)

    def _delimited_rows(self, reader, state, index, width):
        n_blank = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                line, state["start"] = state["start"], None
                self.problems.bad(self.path, line, None, f"unparsable line: {e}", kind="unparsable line")
                continue
            line, state["start"] = state["start"], None
            if not row or (len(row) == 1 and not row[0].strip()):
                n_blank += 1
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
        self.problems.note(f"{Path(self.path).name}: blank lines ignored", n_blank)

    # -- JSON lines
    def _jsonl(self):
        n_blank = 0
        for first, block in iter_line_blocks(self.path):
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
        self.problems.note(f"{Path(self.path).name}: blank lines ignored", n_blank)

    # -- Parquet
    def _parquet(self):
        import pyarrow.parquet as pq

        table = pq.read_table(self.path)
        self.columns = list(table.column_names)
        self.header_line = None
        return self._parquet_rows(table)

    def _parquet_rows(self, table):
        # a generator: runs on first iteration, after the caller has set ``wanted``
        cols = {name: table[name].to_pylist() for name in self.wanted} if self.wanted else {}
        for i in range(table.num_rows):
            yield i + 1, (lambda col, i=i: cols[col][i] if col in cols else None)

    wanted: list[str] = []


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


def _read_interactions(cfg, path, fmt, lo, hi, problems) -> pd.DataFrame:
    mapping = _mapping(cfg.fields, INTERACTION_FIELDS, "dataset.fields")
    source = _Source(path, fmt, cfg, problems)
    cols = _resolve_columns(source, mapping, INTERACTION_FIELDS, REQUIRED_FIELDS)
    source.wanted = list(cols.values())
    require_review = bool(cfg.require_review)
    c_user, c_item, c_rating = cols["user_id"], cols["item_id"], cols["rating"]
    c_review, c_summary = cols.get("review"), cols.get("summary")
    c_time, c_votes = cols.get("timestamp"), cols.get("helpful_votes")
    out = {name: [] for name in INTERACTIONS_WITH_LINE.names}
    bad = problems.bad
    n_sep = 0
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
    problems.note("helpful_votes: thousands separator stripped (e.g. '1,234' -> 1234)", n_sep)
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
    n_dup = n_unrated = 0
    for line, get in source:
        item = _as_id(get(c_item))
        if item is None:
            problems.bad(
                path, line, c_item, "missing or empty item id", kind=f"items {c_item}: missing or empty"
            )
            continue
        if item in seen:
            n_dup += 1
            continue
        seen.add(item)
        if item not in wanted:
            n_unrated += 1
            continue
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
    problems.note("items without metadata (title/description null)", len(item_ids) - len(found))
    if not rows:
        return pd.DataFrame(columns=list(ITEM_FIELDS))
    return pd.DataFrame(rows, columns=list(ITEM_FIELDS))
