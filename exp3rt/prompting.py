"""Strict template rendering shared by the teacher's and the student's prompt files.

Templates are ``str.format`` strings with plain ``{name}`` placeholders. Rendering fails with a sentence
naming the template and the fields on offer when a template asks for a field its caller does not
provide; placeholders are checked when a prompt file is loaded, so a typo is caught before any work.

:func:`render_spans` also reports where chosen fields landed in the rendered text, so the student's
tokenisation can shorten those parts (profiles, reviews) and never the instructions around them.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass, field

from exp3rt.config import ConfigError


class Strict(dict):
    """``format_map`` values that raise a :class:`ConfigError` naming ``where`` for a missing field."""

    def __init__(self, where: str, values: dict):
        super().__init__(values)
        self.where = where

    def __missing__(self, key):
        raise ConfigError(
            f"{self.where} uses {{{key}}}, which this stage does not provide; available: {sorted(self)}"
        )


def fmt_rating(value: float) -> str:
    return f"{value:g}"


def check_placeholders(template: str, where: str) -> list[str]:
    """The template's placeholder names; a placeholder that is not a plain name is a config error."""
    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ConfigError(
            f"{where}: cannot parse the template ({e}); write a literal brace as '{{{{' or '}}}}'"
        ) from None
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conv:
            raise ConfigError(f"{where}: placeholder {{{name}}} is not a plain name")
        names.append(name)
    return names


def template_digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Spanned:
    """Rendered text plus the ``(start, end)`` character spans of its shortenable parts."""

    text: str
    spans: tuple[tuple[int, int], ...] = field(default_factory=tuple)


def render_spans(
    template: str, values: dict, where: str, cut: frozenset[str] | set[str] = frozenset()
) -> Spanned:
    """Fill ``template`` strictly; a field named in ``cut`` becomes a span, a :class:`Spanned` value
    brings its own spans along (shifted to where it lands)."""
    lookup = Strict(where, values)
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(literal)
        pos += len(literal)
        if name is None:
            continue
        value = lookup[name]
        if isinstance(value, Spanned):
            spans += [(pos + a, pos + b) for a, b in value.spans]
            text = value.text
        else:
            text = "" if value is None else str(value)
            if name in cut and text:
                spans.append((pos, pos + len(text)))
        out.append(text)
        pos += len(text)
    return Spanned("".join(out), tuple(spans))
