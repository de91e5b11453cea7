"""Prompt templates and the per-stage answer checks."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from exp3rt import CONF_DIR
from exp3rt.config import ConfigError, validate
from exp3rt.teacher.formats import (
    FormatProblem,
    check_rationale,
    parse_consistency,
    parse_preference_set,
    render_preference_set,
    render_profile,
)
from exp3rt.teacher.prompts import Prompts


def prompt_cfg(overrides=()):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return validate(compose(config_name="annotate", overrides=list(overrides))).prompt


def test_preference_set_roundtrip_and_none_sides():
    text = "[Like]\n- Gorgeous soundtrack\n- Sharp dialogue\n\n[Dislike]\n- None."
    assert parse_preference_set(text) == (["Gorgeous soundtrack", "Sharp dialogue"], [])
    assert parse_preference_set(render_preference_set(["a"], ["b", "c"])) == (["a"], ["b", "c"])
    assert render_profile(["a"], [], 4.25).endswith("[Average Rating]\n4.2") or render_profile(
        ["a"], [], 4.25
    ).endswith("[Average Rating]\n4.3")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("I liked the music.", "[Like] section and a [Dislike] section"),
        ("[Dislike]\n- slow\n[Like]\n- music", "[Like] must come before [Dislike]"),
        ("[Like]\n\n[Dislike]\n- slow", '"- None." when it is empty'),
        ("[Like]\n" + "\n".join(f"- x{i}" for i in range(13)) + "\n[Dislike]\n- None.", "at most 12 bullets"),
    ],
)
def test_preference_set_problems_are_named(text, problem):
    with pytest.raises(
        FormatProblem, match=problem.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")
    ):
        parse_preference_set(text)


@pytest.mark.parametrize(
    "leak",
    [
        "All in all this earns a 4/5 from this viewer because the plot works.",
        "Given the dialogue and pacing, they rated it 4 overall, which follows from the strengths.",
        "The user would give it 4 stars since the acting matches their taste.",
        "This is a solid 4 out of 5 experience for someone who values twists and acting.",
    ],
)
def test_rationale_that_states_the_rating_is_rejected(leak):
    with pytest.raises(FormatProblem, match="states the rating"):
        check_rationale(leak, 4.0, 5.0)


def test_rationale_with_other_numbers_passes():
    text = (
        "The user loves twisty plots and this film's plot has several turns. They dislike slow pacing, and "
        "reviewers found the 2 hour runtime sluggish in places, which weighs against it."
    )
    assert check_rationale(text, 4.0, 5.0) == text
    with pytest.raises(FormatProblem, match="too short"):
        check_rationale("Good.", 4.0, 5.0)


def test_consistency_parse():
    assert parse_consistency("Rating: 3", 1, 5) == 3.0
    assert parse_consistency("rating = 7.5", 1, 10) == 7.5
    with pytest.raises(FormatProblem, match="between 1 and 5"):
        parse_consistency("Rating: 9", 1, 5)
    with pytest.raises(FormatProblem, match="Rating: "):
        parse_consistency("no idea", 1, 5)


def test_prompts_fill_domain_scale_and_inputs():
    prompts = Prompts(prompt_cfg(), "book", 1, 5)
    (role_s, system), (role_u, user) = prompts.render(
        "extract", review="Lovely prose {not a field}", summary="Nice", rating="4"
    )
    assert (role_s, role_u) == ("system", "user")
    assert "book" in system and "1-5 scale" in user and "Lovely prose {not a field}" in user
    assert prompts.version("extract").startswith("exp3rt-v1:")
    assert prompts.version("extract") != prompts.version("rationale")
    repaired = prompts.repair(
        (("system", "s"), ("user", "u")), "bad answer", "it must contain a [Like] section"
    )
    assert (
        repaired[-2] == ("assistant", "bad answer") and "it must contain a [Like] section" in repaired[-1][1]
    )


def test_prompt_version_changes_with_the_text():
    base = Prompts(prompt_cfg(), "movie", 1, 10).version("extract")
    edited = Prompts(
        prompt_cfg(["prompt.extract.system='Be brief about the {domain}.'"]), "movie", 1, 10
    ).version("extract")
    assert base != edited and base.split(":")[0] == edited.split(":")[0]


def test_unknown_placeholder_is_a_clear_error():
    prompts = Prompts(prompt_cfg(["prompt.extract.system='Hello {reviewer_age}'"]), "movie", 1, 10)
    with pytest.raises(ConfigError, match=r"prompt\.extract\.system uses \{reviewer_age\}"):
        prompts.render("extract", review="r", summary="s", rating="3")
