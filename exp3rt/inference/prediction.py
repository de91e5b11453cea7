"""One scored pair as the inference produces it and the evaluation reads it (``predictions.jsonl`` rows)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Prediction:
    user_id: str
    item_id: str
    truth: float
    warm: bool
    reasoning: str
    probs: dict[str, float] = field(default_factory=dict)  # rating text -> probability (valid ratings only)
    rating_argmax: float | None = None  # most likely rating (readout)
    rating_expected: float | None = None  # expected rating (readout)
    # the probability the student put on any valid rating after the answer prefix (the readout's mass
    # before renormalising): low mass means its own greedy continuation would not be a rating
    valid_mass: float | None = None
    fallback: bool = False  # the readout failed and the failure policy supplied the value
    fallback_value: float | None = None
    finish: str | None = (
        None  # how the reasoning ended: stop (rating prefix) | eos | length (cut) | None (fast mode)
    )
    # a student trained with sft task rating_direct: its readout right after the rating-only prompt
    direct_probs: dict[str, float] | None = None
    rating_direct_argmax: float | None = None
    rating_direct_expected: float | None = None
    # eval.compute_estimate: the reasoning as the student wrote it, where the tool changed its estimate
    # (``reasoning`` then holds the rewritten text the rating was read after)
    written: str | None = None
