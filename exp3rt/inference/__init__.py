"""Inference for the student: batched generation (:mod:`.generate`), the rating readout after the
answer prefix (:mod:`.readout`) and free-text parsing (:mod:`.parse`: training's generated validation).

Only :mod:`.parse` is imported here (it has no torch/transformers dependency); import the others
explicitly: ``from exp3rt.inference.generate import generate_batch``.
"""

from exp3rt.inference.parse import (
    FALLBACK_POLICIES,
    Fallback,
    FallbackReport,
    apply_fallback,
    apply_fallbacks,
    parse_rating,
)

__all__ = [
    "FALLBACK_POLICIES",
    "Fallback",
    "FallbackReport",
    "apply_fallback",
    "apply_fallbacks",
    "parse_rating",
]
