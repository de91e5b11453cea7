"""Which pairs exp3rt-evaluate scores, and the guard that none of them was trained on.

The rule every reported figure rests on: a score comes only from pairs that neither the student nor the
baselines trained on. Both learn from the split's train part, and its valid part steers training (early
stopping, model selection), so test figures come from pairs outside both; validation figures
(``eval.split=valid``) come from the valid part and never the train part. :func:`scored_part` picks the
part, :func:`unseen_file_pairs` drops (or refuses) the trained-on pairs of an external ``eval.test_file``,
and :func:`check_scored_pairs` checks the final set before anything is predicted. :func:`mark_warm` then
tags each scored pair warm or cold from the training data actually used.
"""

from __future__ import annotations

import logging

import pandas as pd

from exp3rt.config import ConfigError
from exp3rt.inference.prediction import Prediction

log = logging.getLogger(__name__)


def scored_part(ev, split, tcfg) -> str:
    """The split part exp3rt-evaluate scores (``eval.split``), checked against what the split holds."""
    part = str(ev.get("split") or "test")
    if ev.get("test_file") and part != "test":
        raise ConfigError(
            f"eval.test_file scores the pairs of {ev.test_file}; eval.split={part} does not apply to it: "
            "leave eval.split at test, or drop eval.test_file to score the split's own validation pairs"
        )
    if part == "valid" and len(split.valid) == 0:
        raise ConfigError(
            f"eval.split=valid, but split '{tcfg.split.strategy}' of dataset '{tcfg.dataset.name}' has "
            "no validation "
            f"pairs ({split.directory}): train on a split with a validation part, e.g. exp3rt-pipeline "
            "split.valid_ratio=0.1 "
            f"eval.split=valid (the student is retrained on the new split)"
        )
    return part


def pair_set(frame: pd.DataFrame) -> set[tuple[str, str]]:
    """The (user_id, item_id) pairs of a frame, as strings."""
    return set(zip(frame["user_id"].astype(str), frame["item_id"].astype(str), strict=True))


def pair_of(example) -> tuple[str, str]:
    """The (user_id, item_id) pair an example asks about, as strings."""
    return str(example.meta["user_id"]), str(example.meta["item_id"])


def unseen_file_pairs(examples: list, split, policy: str, path: str) -> tuple[list, dict]:
    """``eval.test_file``'s examples less the pairs the student and the baselines trained on (the split's
    train and valid parts). With ``eval.test_file_overlap=error`` (default) any such pair stops the run:
    a memorised rating is no test (seen on the EXP3RT release: 1,631 of 2,049 file pairs were training pairs).
    Returns the examples kept and the counts, which metrics.json records."""
    train, valid = pair_set(split.train), pair_set(split.valid)
    in_train = sum(pair_of(e) in train for e in examples)
    in_valid = sum(pair_of(e) in valid for e in examples)
    seen = train | valid
    kept = [e for e in examples if pair_of(e) not in seen]
    counts = {
        "file_pairs": len(examples),
        "in_train": int(in_train),
        "in_valid": int(in_valid),
        "dropped": 0,
        "scored": len(kept),
    }
    if in_train or in_valid:
        if policy == "error":
            raise ConfigError(
                f"eval.test_file={path}: {in_train + in_valid} of {len(examples)} pairs are in the "
                "data the student and "
                f"the baselines trained on ({in_train} training, {in_valid} validation pairs of its "
                "split), and scoring "
                f"them would report memorised ratings. Score only the {len(kept)} unseen pairs with "
                "eval.test_file_overlap=drop, or evaluate on the split's own test pairs (leave "
                "eval.test_file unset)"
            )
        counts["dropped"] = in_train + in_valid
        log.warning(
            "eval.test_file: dropped %d of %d pairs that the student trained on (%d training, %d "
            "validation); "
            "scoring the %d unseen ones",
            in_train + in_valid,
            len(examples),
            in_train,
            in_valid,
            len(kept),
        )
    return kept, counts


def check_scored_pairs(examples: list, split, part: str) -> None:
    """The guarantee behind every figure: no scored pair was a training pair of the student or the
    baselines (the split's train part; for test scores, its valid part too), and split-scored pairs are
    exactly pairs of that part. Raises RuntimeError (a bug, never a user error) otherwise."""
    scored = {pair_of(e) for e in examples}
    banned = pair_set(split.train) | (pair_set(split.valid) if part != "valid" else set())
    leaked = scored & banned
    outside = scored - pair_set(split.part(part)) if part in ("train", "valid", "test") else set()
    if leaked or outside:
        example = sorted(leaked or outside)[0]
        raise RuntimeError(
            f"refusing to score: {len(leaked)} pair(s) the student trained on and {len(outside)} outside "
            f"the {part} part, e.g. {example}"
        )


def mark_warm(preds: list[Prediction], train: pd.DataFrame, warm_min_train: int) -> dict:
    """Set each prediction's warm flag from the training data actually used (a user with at least
    ``split.warm_min_train`` training ratings is warm) and return the counts for metrics.json."""
    counts = train["user_id"].astype(str).value_counts()
    users_cold = set()
    for p in preds:
        p.warm = int(counts.get(str(p.user_id), 0)) >= warm_min_train
        if not p.warm:
            users_cold.add(p.user_id)
    users = {p.user_id for p in preds}
    return {
        "warm_min_train": warm_min_train,
        "pairs_warm": sum(p.warm for p in preds),
        "pairs_cold": sum(not p.warm for p in preds),
        "users": len(users),
        "users_cold": len(users_cold),
    }
