"""String id <-> contiguous index mapping shared by the baselines."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd


class IdIndex:
    """Sorted unique ids mapped to ``0..n-1`` (sorted so the mapping, and hence every seeded model,
    does not depend on row order)."""

    def __init__(self, ids: Iterable):
        self.ids = pd.Index(sorted(set(ids)), dtype=object)

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, values) -> np.ndarray:
        """Index of each value; ``-1`` for an id not seen in training."""
        return np.asarray(self.ids.get_indexer(pd.Index(np.asarray(values, dtype=object))), dtype=np.int64)

    def __getitem__(self, idx):
        return self.ids[idx]


def require_columns(df: pd.DataFrame, cols: Iterable[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what} needs columns {list(cols)}; missing {missing}")
    if len(df) == 0:
        raise ValueError(f"{what} got an empty training frame")
