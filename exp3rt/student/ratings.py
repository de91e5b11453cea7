"""The text the student writes for a rating, and back.

A dataset's scale (Amazon 1–5, IMDB 1–10) is written as ``rating + offset``: the paper wrote IMDB's
1–10 as 0–9 so every rating is a single token (``offset=-1``). The mapping is configured
(``sft.rating_offset``), explicit here, and inverted by :meth:`RatingTokens.from_text` before any metric.
Token ids come from the tokenizer, as the ratings appear after the answer prefix — never hard-coded.
"""

from __future__ import annotations

import math
import re

from exp3rt.prompting import fmt_rating

# the rating the student writes after its reasoning (the answer template's last line)
RATING_RE = re.compile(r"Predicted User Rating:\s*(-?\d+(?:\.\d+)?)")


def parse_rating(text: str, scale_min: float, scale_max: float, from_text=None) -> float | None:
    """The rating after ``Predicted User Rating:``; None when absent or outside the scale.

    ``from_text`` (e.g. :meth:`RatingTokens.from_text`) maps the written number back to the dataset's
    scale (undoing ``sft.rating_offset``); text it rejects is None."""
    m = RATING_RE.search(text or "")
    if not m:
        return None
    try:
        value = from_text(m.group(1)) if from_text else float(m.group(1))
    except ValueError:
        return None
    return value if scale_min <= value <= scale_max else None


RATING_PREFIX = "Predicted User Rating: "


class RatingTextError(ValueError):
    """A rating outside the dataset's scale, or text that is not one of the student's rating strings."""


class RatingTokens:
    def __init__(self, scale_min: float, scale_max: float, step: float = 1, offset: float = 0):
        if not scale_min < scale_max:
            raise RatingTextError(f"rating scale needs min < max (got min={scale_min:g}, max={scale_max:g})")
        if not step > 0:
            raise RatingTextError(f"rating scale step must be positive (got {step:g})")
        n = (scale_max - scale_min) / step
        if abs(n - round(n)) > 1e-9:
            raise RatingTextError(
                f"rating scale {scale_min:g}-{scale_max:g} is not a whole number of steps of {step:g}"
            )
        self.scale_min, self.scale_max, self.step, self.offset = (
            float(scale_min),
            float(scale_max),
            float(step),
            float(offset),
        )
        self.ratings = [self._snap(self.scale_min + i * self.step) for i in range(int(round(n)) + 1)]
        self.texts = [fmt_rating(self._snap(r + self.offset)) for r in self.ratings]
        self._by_text = dict(zip(self.texts, self.ratings, strict=True))

    @classmethod
    def from_config(cls, scale, offset: float = 0) -> RatingTokens:
        """From a dataset scale (``ScaleConf`` / ``RatingScale``: min, max, step) and
        ``sft.rating_offset``."""
        return cls(float(scale.min), float(scale.max), float(getattr(scale, "step", 1) or 1), float(offset))

    @staticmethod
    def _snap(value: float) -> float:
        return round(value, 6) + 0.0  # 0.1 + 0.2 steps print as "0.3", and -0.0 as "0"

    def __repr__(self) -> str:
        return (
            f"RatingTokens({self.scale_min:g}-{self.scale_max:g} step {self.step:g}, written "
            f"{self.texts[0]}-{self.texts[-1]})"
        )

    def index(self, rating: float) -> int:
        """Position of ``rating`` in :attr:`ratings`; a value off the scale is an error with a sentence."""
        value = float(rating)
        if math.isnan(value) or not self.scale_min - 1e-9 <= value <= self.scale_max + 1e-9:
            raise RatingTextError(
                f"rating {value:g} is outside the dataset's scale {self.scale_min:g}-{self.scale_max:g}; "
                "check dataset.scale against the data"
            )
        k = (value - self.scale_min) / self.step
        if abs(k - round(k)) > 1e-6:
            raise RatingTextError(
                f"rating {value:g} is not on the scale's steps of {self.step:g} from {self.scale_min:g}; "
                "round ratings to the scale or set dataset.scale.step"
            )
        return int(round(k))

    def to_text(self, rating: float) -> str:
        return self.texts[self.index(rating)]

    def from_text(self, text: str) -> float:
        """The rating (on the dataset's scale) that the student's text stands for."""
        t = str(text).strip()
        if t in self._by_text:
            return self._by_text[t]
        try:
            written = float(t)
        except ValueError:
            raise RatingTextError(
                f"{text!r} is not a rating; the student writes one of {self.texts}"
            ) from None
        try:
            return self.ratings[self.index(self._snap(written - self.offset))]
        except RatingTextError:
            raise RatingTextError(
                f"{text!r} is not a rating; the student writes one of {self.texts}"
            ) from None

    def token_ids(self, tokenizer, prefix: str = RATING_PREFIX) -> list[list[int]]:
        """Each rating string's token ids as they follow ``prefix`` (in :attr:`texts` order).

        Tokenises ``prefix + text`` and removes the tokens of ``prefix`` alone; when the last prefix token
        merges with the rating (a tokenizer that glues the space onto the digit) the readout position would be
        ill-defined, so that is an error naming the prefix.
        """
        head = tokenizer.encode(prefix, add_special_tokens=False)
        out = []
        for text in self.texts:
            ids = tokenizer.encode(prefix + text, add_special_tokens=False)
            if ids[: len(head)] != head:
                raise RatingTextError(
                    f"the tokenizer merges the end of the answer prefix {prefix!r} with the rating {text!r}; "
                    "use a prefix whose last token stays separate (e.g. without a trailing space)"
                )
            rest = ids[len(head) :]
            if not rest or tokenizer.decode(rest).strip() != text:
                raise RatingTextError(
                    f"rating {text!r} after {prefix!r} does not tokenise into its own tokens: {rest}"
                )
            out.append(rest)
        firsts = [ids[0] for ids in out]
        if self._single(out) and len(set(firsts)) != len(firsts):
            raise RatingTextError(
                f"two ratings share one token after {prefix!r}: {dict(zip(self.texts, firsts, strict=True))}"
            )
        self._single_token = self._single(out)
        return out

    @staticmethod
    def _single(ids: list[list[int]]) -> bool:
        return all(len(x) == 1 for x in ids)

    @property
    def single_token(self) -> bool:
        """True when every rating was one token in the latest :meth:`token_ids` call (the readout then reads
        one next-token distribution; otherwise it scores each rating's token sequence)."""
        if not hasattr(self, "_single_token"):
            raise RatingTextError(
                "RatingTokens.single_token is known once token_ids(tokenizer) has been called"
            )
        return self._single_token
