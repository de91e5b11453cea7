"""Free-text rating parsing and the policy for answers that hold no usable rating.

:func:`parse_rating` reads the number after ``Predicted User Rating:`` in generated text: training's
decoded validation (``val/gen_*``), which generates past the prefix. Evaluation reads the rating from
the probabilities instead; its reasoning stops at the prefix, so there is no written rating to parse.
:func:`apply_fallback` decides what a failed prediction
becomes: the user's mean rating, the item's, the global mean, or ``exclude`` (left out of the metric
and counted). A user or item with no mean (cold start) falls back to the global mean; the result is
always flagged, so failures are never scored silently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from exp3rt.config import FailurePolicy
from exp3rt.student.ratings import RATING_RE, parse_rating  # noqa: F401  (training reads them too)

FALLBACK_POLICIES = tuple(p.value for p in FailurePolicy)


@dataclass(frozen=True)
class Fallback:
    value: float | None  # None only under ``exclude``
    fallback: bool  # True when ``pred`` was missing and the policy supplied (or excluded) the value


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def apply_fallback(
    pred: float | None,
    policy: str,
    user_mean: float | None = None,
    item_mean: float | None = None,
    global_mean: float | None = None,
) -> Fallback:
    """``pred`` when it is a number; otherwise the policy's value (``exclude`` gives None), flagged."""
    if policy not in FALLBACK_POLICIES:
        raise ValueError(
            f"unknown rating fallback policy {policy!r}; choose one of {list(FALLBACK_POLICIES)}"
        )
    if not _missing(pred):
        return Fallback(float(pred), False)
    if policy == "exclude":
        return Fallback(None, True)
    value = {"user_mean": user_mean, "item_mean": item_mean, "global_mean": global_mean}[policy]
    if _missing(value):
        value = global_mean  # a cold-start user/item has no mean of its own
    if _missing(value):
        raise ValueError(
            f"fallback policy {policy!r} needs a mean: pass global_mean for users/items without one"
        )
    return Fallback(float(value), True)


@dataclass
class FallbackReport:
    policy: str
    total: int = 0
    failures: int = 0
    excluded: int = 0
    values: list[float | None] = field(default_factory=list)

    @property
    def failure_rate(self) -> float:
        return self.failures / self.total if self.total else 0.0

    def as_dict(self) -> dict:
        return {
            "policy": self.policy,
            "total": self.total,
            "failures": self.failures,
            "excluded": self.excluded,
            "failure_rate": self.failure_rate,
        }


def apply_fallbacks(
    preds: Sequence[float | None],
    policy: str,
    user_means: Sequence[float | None] | None = None,
    item_means: Sequence[float | None] | None = None,
    global_mean: float | None = None,
) -> FallbackReport:
    """:func:`apply_fallback` over a list, counting failures (and exclusions) in the report."""
    n = len(preds)
    users = list(user_means) if user_means is not None else [None] * n
    items = list(item_means) if item_means is not None else [None] * n
    if len(users) != n or len(items) != n:
        raise ValueError(f"{n} predictions but {len(users)} user means and {len(items)} item means")
    report = FallbackReport(policy)
    for p, u, i in zip(preds, users, items, strict=True):
        out = apply_fallback(p, policy, u, i, global_mean)
        report.total += 1
        report.failures += out.fallback
        report.excluded += out.value is None
        report.values.append(out.value)
    return report
