"""Is the reasoning about the pair? On the synthetic world the truth is known: which aspects a user likes
and dislikes and which an item is strong and weak in. A reasoning that explains *this* rating names the
aspects where the two meet, and not others.

For a pair (u, i) the true overlap is ``T = (likes_u ∪ dislikes_u) ∩ (strong_i ∪ weak_i)``, the aspects
that move the world's rating (``exp3rt.data.synthetic``). An aspect is named in a reasoning when one of
its words occurs in it (its name or one of its noun phrases without the article, e.g. ``plot``, ``story``,
``storyline``; whole words, case-insensitive). Over the pairs, with ``N_p`` the aspects named:

* ``aspect_precision = Σ |N_p ∩ T_p| / Σ |N_p|`` (micro; pairs naming nothing add nothing),
* ``aspect_recall = Σ |N_p ∩ T_p| / Σ |T_p|`` (micro; pairs with an empty overlap add nothing),
* ``distinct_share = |distinct reasoning texts| / |reasonings|`` (1.0: every pair got its own text;
  a student that writes one generic explanation for everything scores 1/n).

The same precision and recall of the teacher's own rationales (training pairs) are the reference: what a
student that learnt its teacher would reach.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pandas as pd

from exp3rt.data.synthetic import vocab_for


def aspect_patterns(domain: str) -> dict[str, re.Pattern]:
    """One whole-word pattern per aspect of the domain's vocabulary."""
    out = {}
    for a in vocab_for(domain).aspects:
        words = {a.name.replace("_", " ")} | {re.sub(r"^(the|a|an) ", "", noun) for noun, _ in a.nouns}
        alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
        out[a.name] = re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)
    return out


def named_aspects(text: str | None, patterns: dict[str, re.Pattern]) -> set[str]:
    return {name for name, p in patterns.items() if text and p.search(text)}


def true_overlaps(
    user_truth: pd.DataFrame, item_truth: pd.DataFrame, pairs: Iterable[tuple[str, str]]
) -> list[set[str]]:
    users = user_truth.set_index("user_id")
    items = item_truth.set_index("item_id")
    out = []
    for u, i in pairs:
        side_u = set(users.at[u, "likes"]) | set(users.at[u, "dislikes"]) if u in users.index else set()
        side_i = set(items.at[i, "strong"]) | set(items.at[i, "weak"]) if i in items.index else set()
        out.append(side_u & side_i)
    return out


def aspect_scores(texts: list[str | None], truths: list[set[str]], patterns: dict[str, re.Pattern]) -> dict:
    """Micro precision and recall of the aspects named in ``texts`` against ``truths`` (one per text)."""
    hit = named = relevant = 0
    for text, truth in zip(texts, truths, strict=True):
        n = named_aspects(text, patterns)
        hit += len(n & truth)
        named += len(n)
        relevant += len(truth)
    return {
        "aspect_precision": hit / named if named else None,
        "aspect_recall": hit / relevant if relevant else None,
        "aspects_named": named,
        "aspects_true": relevant,
    }


def reasoning_about_the_pair(
    dataset, reasonings: list[tuple[str, str, str | None]], teacher: pd.DataFrame | None = None
) -> dict | None:
    """The metrics above for ``reasonings`` (user, item, text) on a synthetic world; None elsewhere (no
    ground truth). ``teacher``: the teacher's rationale rows (``user_id, item_id, rationale``) for the
    reference figures."""
    extras = getattr(dataset, "extras", {}) or {}
    if not getattr(dataset, "synthetic", False) or "user_truth" not in extras or "item_truth" not in extras:
        return None
    patterns = aspect_patterns(str(dataset.domain))
    texts = [t for _, _, t in reasonings]
    written = [t for t in texts if t]
    out = {
        "n": len(texts),
        "with_reasoning": len(written),
        "distinct_share": len(set(written)) / len(written) if written else None,
        **aspect_scores(
            texts,
            true_overlaps(extras["user_truth"], extras["item_truth"], [(u, i) for u, i, _ in reasonings]),
            patterns,
        ),
    }
    if teacher is not None and len(teacher):
        ok = teacher.dropna(subset=["rationale"])
        ref = aspect_scores(
            list(ok["rationale"]),
            true_overlaps(
                extras["user_truth"], extras["item_truth"], zip(ok["user_id"], ok["item_id"], strict=True)
            ),
            patterns,
        )
        out["teacher_aspect_precision"], out["teacher_aspect_recall"] = (
            ref["aspect_precision"],
            ref["aspect_recall"],
        )
    return out
