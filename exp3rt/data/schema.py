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


def conform_interactions(df: pd.DataFrame) -> pd.DataFrame:
    """Return ``df`` with exactly the canonical interaction columns and dtypes (missing optional
    columns are filled with nulls / zeros)."""
    out = pd.DataFrame(index=df.index)
    for name in INTERACTION_COLUMNS:
        if name in df.columns:
            out[name] = df[name]
        elif name == "helpful_votes":
            out[name] = 0
        else:
            out[name] = None
    table = pa.Table.from_pandas(out.reset_index(drop=True), schema=INTERACTION_SCHEMA, preserve_index=False)
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def conform_items(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(index=df.index)
    for name in ITEM_COLUMNS:
        if name in df.columns:
            out[name] = df[name]
        elif name == "categories":
            out[name] = [[] for _ in range(len(df))]
        elif name == "extra":
            out[name] = "{}"
        else:
            out[name] = None
    table = pa.Table.from_pandas(out.reset_index(drop=True), schema=ITEM_SCHEMA, preserve_index=False)
    return table.to_pandas()
