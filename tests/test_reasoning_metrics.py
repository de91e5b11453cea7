"""Is the student's reasoning about the pair? Aspect precision/recall against the synthetic world's truth."""

from __future__ import annotations

import pandas as pd
import pytest
from omegaconf import OmegaConf

from exp3rt.evaluation.reasoning import (
    aspect_patterns,
    aspect_scores,
    named_aspects,
    reasoning_about_the_pair,
)


def test_aspects_are_found_by_their_words_as_whole_words():
    p = aspect_patterns("movie")
    assert named_aspects("The storyline dragged but the performances were superb.", p) == {"plot", "acting"}
    assert named_aspects("A plotted, castaway tale.", p) == set()  # no whole word
    assert named_aspects(None, p) == set()


def test_precision_and_recall_are_micro_averages_over_pairs():
    p = aspect_patterns("movie")
    texts = ["The plot was great and the acting weak.", "The acting carried it.", None]
    truths = [{"plot"}, {"acting", "plot"}, {"plot"}]
    s = aspect_scores(texts, truths, p)
    # named: {plot, acting} + {acting} + {} = 3; hits: plot + acting = 2; true: 1 + 2 + 1 = 4
    assert (s["aspects_named"], s["aspects_true"]) == (3, 4)
    assert s["aspect_precision"] == pytest.approx(2 / 3) and s["aspect_recall"] == pytest.approx(2 / 4)


def test_on_the_synthetic_world_a_generic_text_scores_low_and_the_truth_scores_full():
    from exp3rt.data.schema import RatingScale
    from exp3rt.data.synthetic import generate_world, vocab_for

    world = OmegaConf.create({"n_users": 20, "n_items": 15, "min_per_user": 4, "max_per_user": 6, "seed": 3})
    from exp3rt.config import SyntheticWorldConf

    ds = generate_world(
        OmegaConf.merge(OmegaConf.structured(SyntheticWorldConf), world), "movie", RatingScale(1, 5, 1)
    )
    inter = ds.interactions.head(30)
    pairs = list(zip(inter.user_id, inter.item_id, strict=True))
    users = ds.extras["user_truth"].set_index("user_id")
    items = ds.extras["item_truth"].set_index("item_id")
    vocab = vocab_for("movie")

    def truthful(u, i):  # names exactly the aspects where the two meet
        both = (set(users.likes[u]) | set(users.dislikes[u])) & (set(items.strong[i]) | set(items.weak[i]))
        return (
            " ".join(f"{vocab.aspect(a).nouns[0][0]} matters." for a in sorted(both)) or "Nothing in common."
        )

    good = reasoning_about_the_pair(ds, [(u, i, truthful(u, i)) for u, i in pairs])
    assert good["aspect_precision"] == pytest.approx(1.0) and good["aspect_recall"] == pytest.approx(1.0)
    generic = reasoning_about_the_pair(ds, [(u, i, "Great plot, great acting.") for u, i in pairs])
    assert generic["distinct_share"] == pytest.approx(1 / 30) and generic["aspect_recall"] < 0.6
    teacher = pd.DataFrame(
        {"user_id": inter.user_id, "item_id": inter.item_id, "rationale": [truthful(u, i) for u, i in pairs]}
    )
    ref = reasoning_about_the_pair(ds, [(u, i, "x") for u, i in pairs], teacher)
    assert ref["teacher_aspect_recall"] == pytest.approx(1.0)


def test_no_ground_truth_no_figures():
    class Real:
        synthetic, extras, domain = False, {}, "movie"

    assert reasoning_about_the_pair(Real(), [("u", "i", "the plot")]) is None
