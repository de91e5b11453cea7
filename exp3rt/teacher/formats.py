"""Each stage's answer format, checked before an answer is accepted.

A check returns the parsed value or raises :class:`FormatProblem` with a short sentence that is sent
back to the teacher in a repair request (and stored with the raw text when repairs run out).
"""

from __future__ import annotations

import re

from exp3rt.data.release import profile_sections

MAX_BULLETS = 12


class FormatProblem(ValueError):
    pass


_NONE = re.compile(r"^\s*none\.?\s*$", re.IGNORECASE)


def parse_preference_set(text: str) -> tuple[list[str], list[str]]:
    """``[Like]`` bullets then ``[Dislike]`` bullets; ``None.`` for an empty side."""
    if not text or not text.strip():
        raise FormatProblem("the answer was empty")
    low = text.lower()
    if "[like]" not in low or "[dislike]" not in low:
        raise FormatProblem("it must contain a [Like] section and a [Dislike] section")
    if low.index("[like]") > low.index("[dislike]"):
        raise FormatProblem("[Like] must come before [Dislike]")
    sections = profile_sections(text)
    likes = [b for b in sections.get("like", []) if not _NONE.match(b)]
    dislikes = [b for b in sections.get("dislike", []) if not _NONE.match(b)]
    if not sections.get("like") or not sections.get("dislike"):
        raise FormatProblem('each section needs at least one bullet, or "- None." when it is empty')
    if len(likes) > MAX_BULLETS or len(dislikes) > MAX_BULLETS:
        raise FormatProblem(f"use at most {MAX_BULLETS} bullets per section")
    return likes, dislikes


def render_preference_set(likes: list[str], dislikes: list[str]) -> str:
    def side(items: list[str]) -> str:
        return "\n".join(f"- {b}" for b in items) if items else "- None."

    return f"[Like]\n{side(likes)}\n\n[Dislike]\n{side(dislikes)}"


def render_profile(likes: list[str], dislikes: list[str], average: float | None) -> str:
    text = render_preference_set(likes, dislikes)
    return text if average is None else f"{text}\n\n[Average Rating]\n{average:.1f}"


def _rating_patterns(rating: float, scale_max: float) -> list[re.Pattern]:
    r = re.escape(f"{rating:g}")
    m = re.escape(f"{scale_max:g}")
    num = rf"(?<![\d.]){r}(?:\.0)?(?![\d])"
    return [
        re.compile(rf"{num}\s*(?:/|out of|of)\s*{m}\b", re.IGNORECASE),
        re.compile(
            rf"\b(?:rat(?:ed|es|ing)|scor(?:ed|es|e)|gave(?: it)?|give(?: it)?)\b[^.\n]{{0,20}}?{num}",
            re.IGNORECASE,
        ),
        re.compile(rf"{num}\s*(?:-\s*)?stars?\b", re.IGNORECASE),
    ]


def check_rationale(text: str, rating: float, scale_max: float, min_chars: int = 40) -> str:
    """Non-empty, long enough to be reasoning, and it must not state the rating it was given."""
    text = (text or "").strip()
    if len(text) < min_chars:
        raise FormatProblem("the reasoning was empty or too short")
    for pattern in _rating_patterns(rating, scale_max):
        hit = pattern.search(text)
        if hit:
            raise FormatProblem(
                f'it states the rating ("{hit.group(0)}"); explain the reasons without giving the rating'
            )
    return text


_RATING = re.compile(r"rating\s*[:=]?\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_consistency(text: str, scale_min: float, scale_max: float) -> float:
    match = _RATING.search(text or "") or re.search(r"(-?\d+(?:\.\d+)?)", text or "")
    if not match:
        raise FormatProblem('answer with "Rating: " and one number')
    value = float(match.group(1))
    if not scale_min <= value <= scale_max:
        raise FormatProblem(f"the rating must be between {scale_min:g} and {scale_max:g}")
    return value
