"""Canonical records every loader produces and every later stage consumes.

Interactions (one row per user–item rating):

=============== ======== ====================================================================
column          dtype    meaning
=============== ======== ====================================================================
user_id         string   the dataset's own user id (kept verbatim; never remapped on disk)
item_id         string   the dataset's own item id
rating          float64  on the dataset's scale ``[scale.min, scale.max]``
review          string   review text (may be null only for datasets without reviews)
summary         string   review title / summary (nullable)
timestamp       int64    unix seconds (nullable: ``pd.NA``)
helpful_votes   int64    helpful-vote count (0 when the source has none)
=============== ======== ====================================================================

Items: ``item_id``, ``title``, ``description`` (plain text), ``categories`` (list of strings),
``extra`` (a JSON object as text: source fields we keep but do not interpret).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import pandas as pd
import pyarrow as pa

INTERACTION_COLUMNS = ["user_id", "item_id", "rating", "review", "summary", "timestamp", "helpful_votes"]
ITEM_COLUMNS = ["item_id", "title", "description", "categories", "extra"]

INTERACTION_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("rating", pa.float64()),
        ("review", pa.string()),
        ("summary", pa.string()),
        ("timestamp", pa.int64()),
        ("helpful_votes", pa.int64()),
    ]
)
ITEM_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("description", pa.string()),
        ("categories", pa.list_(pa.string())),
        ("extra", pa.string()),
    ]
)


@dataclass(frozen=True)
class RatingScale:
    """An inclusive rating range, e.g. Amazon 1–5, IMDB 1–10."""

    min: float
    max: float
    step: float = 1.0

    def __post_init__(self) -> None:
        if not self.min < self.max:
            raise ValueError(f"rating scale needs min < max, got min={self.min} max={self.max}")

    def contains(self, value: float) -> bool:
        return (not math.isnan(value)) and self.min <= value <= self.max

    def on_grid(self, value: float) -> bool:
        """``value`` is ``min + k * step`` for a whole ``k`` (within float noise)."""
        k = (value - self.min) / self.step
        return abs(k - round(k)) <= 1e-6

    def level_set(self, limit: int = 10_000) -> frozenset:
        """The levels as a set for a loader's fast path (``rating in levels`` before :meth:`off_grid`);
        empty for a scale with more than ``limit`` levels (every value then takes the exact check)."""
        n = (self.max - self.min) / self.step
        return frozenset(self.levels) if n <= limit else frozenset()

    def off_grid(self, value: float) -> str | None:
        """Why ``value`` (already within the range) is not a rating of this scale, or None when it is.

        Every loader calls this for every rating, so an off-step value (3.5 on a step-1 scale) is bad
        input at load time, named by file and line, instead of failing training later. The reason says
        which ``dataset.scale.step`` would include the value (when a finer step that divides the scale does).
        """
        if self.on_grid(value):
            return None
        finer = None
        for d in (2, 4, 5, 10, 20, 100):
            candidate = RatingScale(self.min, self.max, self.step / d)
            n = (self.max - self.min) / candidate.step
            if abs(n - round(n)) <= 1e-9 and candidate.on_grid(value):
                finer = candidate.step
                break
        fix = (
            f"set dataset.scale.step={finer:g} if such ratings are valid"
            if finer is not None
            else "round the ratings to the scale's steps"
        )
        return (
            f"rating {value:g} is not on the scale's steps of {self.step:g} from {self.min:g} "
            f"(dataset.scale.step={self.step:g}); {fix}"
        )

    def clip(self, values):
        import numpy as np

        return np.clip(values, self.min, self.max)

    @property
    def levels(self) -> list[float]:
        """Every valid rating value on the scale (for integer scales: min, min+1, …, max)."""
        n = int(round((self.max - self.min) / self.step))
        return [self.min + i * self.step for i in range(n + 1)]


@dataclass
class Dataset:
    """A loaded dataset in canonical form, plus whatever the source carried beyond ratings.

    ``extras`` holds named tables a loader found alongside the ratings (e.g. the EXP3RT release's
    user and item profiles, or its given train/test labels), keyed by a stable name.
    """

    name: str
    domain: str
    scale: RatingScale
    interactions: pd.DataFrame
    items: pd.DataFrame
    synthetic: bool = False
    extras: dict[str, pd.DataFrame] = field(default_factory=dict)

    def summary(self) -> dict:
        inter = self.interactions
        return {
            "name": self.name,
            "synthetic": self.synthetic,
            "domain": self.domain,
            "scale": [self.scale.min, self.scale.max],
            "interactions": int(len(inter)),
            "users": int(inter["user_id"].nunique()),
            "items": int(inter["item_id"].nunique()),
            "with_review": int(inter["review"].notna().sum()),
            "mean_rating": float(inter["rating"].mean()) if len(inter) else float("nan"),
        }


def empty_interactions() -> pd.DataFrame:
    return INTERACTION_SCHEMA.empty_table().to_pandas()


def empty_items() -> pd.DataFrame:
    return ITEM_SCHEMA.empty_table().to_pandas()


def arrow_to_pandas(table: pa.Table) -> pd.DataFrame:
    """Arrow → pandas the canonical way: nullable Int64 for integers, strings stay Arrow-backed."""
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def _conform(df: pd.DataFrame, schema: pa.Schema, fill: dict) -> pd.DataFrame:
    """Canonical columns in order with the schema's dtypes. Columns that already have the right dtype
    are kept as they are (no copy), so conforming a large loader output costs almost nothing."""
    target = arrow_to_pandas(schema.empty_table()).dtypes
    df = df.reset_index(drop=True)
    out = {}
    for f in schema:
        if f.name in df.columns:
            col = df[f.name]
            if col.dtype == target[f.name]:
                out[f.name] = col
                continue
            values = col.to_numpy(dtype=object, na_value=None) if f.type == pa.int64() else col
            arr = pa.array(values, type=f.type, from_pandas=True)
        else:
            arr = pa.array(
                [fill[f.name]() for _ in range(len(df))] if f.name in fill else [None] * len(df), type=f.type
            )
        out[f.name] = arrow_to_pandas(pa.table({f.name: arr}))[f.name]
    return pd.DataFrame(out, copy=False)


def conform_interactions(df: pd.DataFrame) -> pd.DataFrame:
    """Return ``df`` with exactly the canonical interaction columns and dtypes (missing optional
    columns are filled with nulls / zeros)."""
    return _conform(df, INTERACTION_SCHEMA, {"helpful_votes": lambda: 0})


def conform_items(df: pd.DataFrame) -> pd.DataFrame:
    return _conform(df, ITEM_SCHEMA, {"categories": list, "extra": lambda: "{}"})


def scale_of(cfg) -> RatingScale:
    """The rating scale a ``dataset`` config declares."""
    return RatingScale(float(cfg.scale.min), float(cfg.scale.max), float(cfg.scale.step))


def round_rating(mean: Fraction | float) -> float:
    """One decimal, halves rounded up (4.25 → 4.3, 4.249… → 4.2), computed exactly on the fraction —
    Python's ``round`` would round half to even on a binary float (``round(4.25, 1) == 4.2``). The
    averages in profiles, for teacher and student alike."""
    frac = Fraction(mean)
    return float(Fraction(math.floor(frac * 10 + Fraction(1, 2)), 10))


def describe_item(row: pd.Series | dict | None, domain: str) -> str:
    """The item description shown to teacher and student: title, categories, description.
    Never the ``extra`` column (on the synthetic world it holds the answer)."""
    if row is None:
        return "Title: unknown"
    get = row.get
    lines = [f"Title: {get('title') or 'unknown'}"]
    cats = get("categories")
    if cats is not None and len(cats):
        lines.append(f"Categories: {', '.join(str(c) for c in cats)}")
    if get("description"):
        lines.append(f"Description: {get('description')}")
    return "\n".join(lines)
