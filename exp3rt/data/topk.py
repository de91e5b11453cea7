"""Load a LightGCN top-k folder (the EXP3RT release's ``topk/imdb``, ``topk/amazon-book`` and their
``org/`` variants) as a dataset: loader ``lightgcn_topk``, presets ``release_topk_imdb`` /
``release_topk_amazon_book``.

The folder holds implicit feedback: ``train.txt`` / ``test.txt`` (``user_remap item_remap ...``) and
``user_list.txt`` / ``item_list.txt`` (``org_id remap_id``). Every interaction becomes a rating of
:data:`IMPLICIT_RATING` (1 = interacted; the presets use the scale 0–1, and 0 never occurs), in the
release's original ids (the same ids as its rating files, e.g. ``/user/ur55597043/``). The files decide
the split: ``extras["split_labels"]`` labels train.txt pairs ``train`` and test.txt pairs ``test``, which
``split.strategy=predefined`` (selected by the presets) keeps.

Anomalies of the release are repaired and counted in the data report, never accepted silently:

- a user on several lines of a file (``topk/imdb/org/test.txt``: 2,577 lines for 859 users): merged;
- a pair listed twice in one file: kept once;
- an id list without its ``org_id remap_id`` header (the Amazon-Book ``org/`` lists): read from line 1;
- a pair in both train.txt and test.txt (80 in ``topk/imdb/org``): resolved by ``dataset.duplicates`` —
  ``keep_first`` (default) keeps it for training and drops it from test, so no evaluated pair is a
  training pair; ``keep_latest`` keeps it as a test pair and drops it from training; ``error`` reports
  it as bad input naming test.txt and its line (strict: raise; lenient: drop it from test, counted).

Genuinely bad lines (an id that is not an integer or not in the lists) are bad input naming file, line
and field (:mod:`exp3rt.data.problems`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from exp3rt.config import ConfigError, DuplicatePolicy
from exp3rt.data.problems import InputProblems
from exp3rt.data.release import TOPK_FILES, read_topk
from exp3rt.data.schema import Dataset, scale_of

IMPLICIT_RATING = 1.0


def _resolve_cross_file(
    train: pd.DataFrame, test: pd.DataFrame, policy: DuplicatePolicy, directory: Path, problems: InputProblems
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pairs in both files: keep them in one split only, as ``policy`` says (counted or reported)."""
    both = test.reset_index().merge(
        train[["user_id", "item_id", "_line"]], on=["user_id", "item_id"], suffixes=("", "_train")
    )
    if both.empty:
        return train, test
    n = len(both)
    if policy == DuplicatePolicy.keep_first:
        problems.note("test.txt: pairs also in train.txt (dropped from test, kept for training)", n)
        return train, test.drop(index=both["index"]).reset_index(drop=True)
    if policy == DuplicatePolicy.keep_latest:
        problems.note("train.txt: pairs also in test.txt (dropped from training, kept as test pairs)", n)
        keys = pd.MultiIndex.from_frame(both[["user_id", "item_id"]])
        in_test = pd.MultiIndex.from_frame(train[["user_id", "item_id"]]).isin(keys)
        return train[~in_test].reset_index(drop=True), test
    for row in both.sort_values("_line").to_dict("records"):
        problems.bad(
            directory / "test.txt",
            int(row["_line"]),
            "item_remap",
            f"pair (user {row['user_id']!r}, item {row['item_id']!r}) is also in train.txt "
            f"(line {int(row['_line_train'])}); "
            "set dataset.duplicates=keep_first to drop such pairs from test or keep_latest to drop "
            "them from training",
            kind="test.txt: pair also in train.txt",
        )
    return train, test.drop(index=both["index"]).reset_index(drop=True)  # lenient: skipped, counted


def load_topk(cfg, problems: InputProblems) -> Dataset:
    """Load the LightGCN folder ``dataset.path`` (loader ``lightgcn_topk``); see the module doc.

    Extras: ``split_labels`` (``user_id, item_id, split``), ``topk_user_ids`` / ``topk_item_ids`` (the
    ``org_id, remap_id`` maps, e.g. to write the split back in LightGCN or RecBole form)."""

    if not cfg.path:
        raise ConfigError(
            f"loader 'lightgcn_topk' needs dataset.path: a folder with {', '.join(TOPK_FILES)} "
            "(e.g. the EXP3RT release's topk/imdb)"
        )
    directory = Path(str(cfg.path))
    if not directory.is_dir():
        raise FileNotFoundError(
            f"dataset.path {directory} is not a folder: loader 'lightgcn_topk' reads a LightGCN folder "
            f"({', '.join(TOPK_FILES)}), e.g. dataset.path=/data/exp3rt/topk/imdb"
        )
    scale = scale_of(cfg)
    if not scale.contains(IMPLICIT_RATING):
        raise ConfigError(
            f"loader 'lightgcn_topk' writes every interaction as rating {IMPLICIT_RATING:g}, outside "
            f"dataset.scale [{scale.min:g}, {scale.max:g}]: use scale min 0, max 1 (the release_topk presets)"
        )
    if cfg.require_review:
        raise ConfigError(
            "config key 'dataset.require_review' is true, but a LightGCN folder has no review text: "
            "set dataset.require_review=false"
        )
    topk = read_topk(directory, problems)
    train, test = _resolve_cross_file(
        topk.train, topk.test, DuplicatePolicy(cfg.duplicates), directory, problems
    )
    pairs = pd.concat([train.assign(split="train"), test.assign(split="test")], ignore_index=True)
    n = len(pairs)
    interactions = pd.DataFrame(
        {
            "user_id": pairs["user_id"].astype("string"),
            "item_id": pairs["item_id"].astype("string"),
            "rating": pd.Series([IMPLICIT_RATING] * n, dtype="float64"),
            "review": pd.array([None] * n, dtype="string"),
            "summary": pd.array([None] * n, dtype="string"),
            "timestamp": pd.array([None] * n, dtype="Int64"),
            "helpful_votes": pd.array([0] * n, dtype="Int64"),
            "_line": pairs["_line"].astype("int64"),
        }
    )
    items = pd.DataFrame({"item_id": topk.item_ids["org_id"].astype("string")})
    return Dataset(
        name=str(cfg.name),
        domain=str(cfg.domain),
        scale=scale,
        interactions=interactions,
        items=items,
        synthetic=False,
        extras={
            "split_labels": pairs[["user_id", "item_id", "split"]].reset_index(drop=True),
            "topk_user_ids": topk.user_ids,
            "topk_item_ids": topk.item_ids,
        },
    )
