"""Aspect names for the extractive teacher (``prompt.aspect_lexicon``): reviews call one aspect by several
words ("the storyline", "the plot"), and a teacher that lists aspects by the words reviewers used gives
profiles that cannot meet: a user who likes "characters" and a movie praised for its "protagonist" share no
word. An LLM teacher names aspects as its prompt asks; the extractive one reads a lexicon and, before it
splits a review into likes and dislikes, writes every other name of an aspect as the aspect's own name.

``prompt.aspect_lexicon``:

* null (the default): reviews are read as written;
* ``world``: the synthetic world's own names for ``dataset.domain`` (``exp3rt.data.world_vocab``), what an
  LLM teacher would know without being told ("the performances" are the acting);
* a path to a YAML file of ``aspect: [other name, ...]``, e.g. ``plot: [story, storyline]``.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path

import yaml

from exp3rt.config import ConfigError
from exp3rt.data.world_vocab import ALIASES, VOCABS

WORLD = "world"


def load_lexicon(value, domain: str, loader: str | None = None) -> dict[str, str]:
    """``{other name: aspect name}`` (lower case) for ``prompt.aspect_lexicon`` = ``value`` (module
    docstring); ``loader`` is ``dataset.loader`` (``world`` needs the synthetic one)."""
    if value is None or str(value).strip() == "":
        return {}
    if str(value) == WORLD:
        return _world_lexicon(domain, loader)
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"prompt.aspect_lexicon: {path} is not a file; give a YAML file of 'aspect: [other name, ...]', "
            f"'{WORLD}' on the synthetic dataset, or null"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"prompt.aspect_lexicon: {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"prompt.aspect_lexicon: {path} must map each aspect to a list of its other names")
    out: dict[str, str] = {}
    for aspect, names in raw.items():
        if not isinstance(aspect, str) or not aspect.strip():
            raise ConfigError(f"prompt.aspect_lexicon: {path}: aspect {aspect!r} is not a name")
        if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
            raise ConfigError(
                f"prompt.aspect_lexicon: {path}: aspect '{aspect}' must list its other names as strings "
                f"(got {names!r})"
            )
        for name in names:
            key = name.strip().lower()
            if out.get(key, aspect.strip().lower()) != aspect.strip().lower():
                raise ConfigError(
                    f"prompt.aspect_lexicon: {path}: '{name}' is named for both '{out[key]}' and '{aspect}'"
                )
            if key != aspect.strip().lower():
                out[key] = aspect.strip().lower()
    return out


def _world_lexicon(domain: str, loader: str | None) -> dict[str, str]:
    key = ALIASES.get(domain.lower(), domain.lower())
    if loader != "synthetic" or key not in VOCABS:
        raise ConfigError(
            f"prompt.aspect_lexicon={WORLD} names the synthetic world's aspects, but this dataset "
            f"(dataset.loader={loader}, dataset.domain={domain}) is not a synthetic world with a word list "
            f"({', '.join(sorted(VOCABS))}); give a YAML file of 'aspect: [other name, ...]' or "
            "prompt.aspect_lexicon=null"
        )
    out: dict[str, str] = {}
    for aspect in VOCABS[key].aspects:
        for noun, _ in aspect.nouns:
            name = noun.removeprefix("the ").lower()
            if name != aspect.name:
                out[name] = aspect.name
    return out


def lexicon_tag(lexicon: dict[str, str]) -> str:
    """A short digest of a lexicon, for the extract stage's prompt version ("" when empty)."""
    if not lexicon:
        return ""
    return hashlib.sha256(json.dumps(lexicon, sort_keys=True).encode()).hexdigest()[:8]


@lru_cache(maxsize=8)
def _pattern(names: tuple[str, ...]) -> re.Pattern:
    """One pattern for a lexicon's other names, the longest first (so "love story" wins over "story")."""
    longest = sorted(names, key=lambda n: (-len(n), n))
    return re.compile(r"\b(" + "|".join(re.escape(n) for n in longest) + r")\b", re.IGNORECASE)


def name_aspects(text: str, lexicon: dict[str, str]) -> str:
    """``text`` with every other name in ``lexicon`` (whole words, any case, longest first) written as its
    aspect's name; a capital first letter stays capital."""
    if not lexicon or not text:
        return text
    pattern = _pattern(tuple(sorted(lexicon)))

    def swap(m: re.Match) -> str:
        out = lexicon[m.group(0).lower()]
        return out[:1].upper() + out[1:] if m.group(0)[:1].isupper() else out

    return pattern.sub(swap, text)
