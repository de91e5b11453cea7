"""prompt.aspect_lexicon: the extractive teacher writes each other name of an aspect as the aspect's own name
before it reads a review, so a user's and an item's profiles meet on one word. Versions, caches, errors and
the profiles it gives on the synthetic world."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_annotate import SMALL_WORLD, annotate
from test_annotate_http import annotate as annotate_http
from test_annotate_http import overrides as http_overrides
from test_annotate_http import server  # noqa: F401 (the fixture)
from test_teacher_formats import prompt_cfg

from exp3rt import CONF_DIR
from exp3rt.config import ConfigError
from exp3rt.data.synthetic import vocab_for
from exp3rt.teacher.backends.extractive import ExtractiveBackend
from exp3rt.teacher.lexicon import load_lexicon, name_aspects
from exp3rt.teacher.prompts import STAGES, Prompts

WORLD = load_lexicon("world", "movie", "synthetic")


def other_names(domain: str = "movie") -> set[str]:
    """Every noun the world writes for an aspect that is not the aspect's own name."""
    return {
        n.removeprefix("the ") for a in vocab_for(domain).aspects for n, _ in a.nouns if n != f"the {a.name}"
    }


def test_other_names_become_the_aspect_whole_words_longest_first_capital_kept():
    text = "The storyline was thin. I loved the love story, the Protagonist and the stunts; history stays."
    assert name_aspects(text, WORLD) == (
        "The plot was thin. I loved the romance, the Characters and the action scenes; history stays."
    )
    assert name_aspects(text, {}) == text


def test_the_world_lexicon_names_every_other_noun_of_the_domain():
    for domain in ("movie", "book", "product"):
        lex = load_lexicon("world", domain, "synthetic")
        assert set(lex) == other_names(domain)
        names = {a.name for a in vocab_for(domain).aspects}
        assert set(lex.values()) <= names


def test_a_lexicon_file_is_read_and_its_mistakes_named(tmp_path):
    good = tmp_path / "aspects.yaml"
    good.write_text("aroma: [smell, nose]\ntaste: [flavour, Palate]\n")
    assert load_lexicon(str(good), "beer", "amazon") == {
        "smell": "aroma",
        "nose": "aroma",
        "flavour": "taste",
        "palate": "taste",
    }
    bad = tmp_path / "bad.yaml"
    bad.write_text("aroma: [smell]\ntaste: [smell]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: 'smell' is named for both 'aroma' and 'taste'"):
        load_lexicon(str(bad), "beer", "amazon")
    bad.write_text("aroma: smell\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: aspect 'aroma' must list its other names"):
        load_lexicon(str(bad), "beer", "amazon")
    with pytest.raises(ConfigError, match="is not a file"):
        load_lexicon(str(tmp_path / "missing.yaml"), "beer", "amazon")


def test_the_world_lexicon_is_refused_off_the_synthetic_world_and_null_works_as_advised():
    with pytest.raises(ConfigError, match="prompt.aspect_lexicon=null") as e:
        load_lexicon("world", "movie", "amazon")
    assert "dataset.loader=amazon" in str(e.value)
    assert load_lexicon(None, "movie", "amazon") == {}


def test_the_lexicon_tags_only_the_extract_stage_and_none_keeps_every_old_version():
    base = prompt_cfg()
    assert base.aspect_lexicon is None
    plain = Prompts(base, "movie", 1, 5, loader="synthetic")
    named = Prompts(OmegaConf.merge(base, {"aspect_lexicon": "world"}), "movie", 1, 5, loader="synthetic")
    for stage in STAGES:
        if stage == "extract":
            assert named.version(stage).startswith(plain.version(stage) + ":lexicon-")
        else:
            assert named.version(stage) == plain.version(stage)
    assert Prompts(base, "movie", 1, 5).version("extract") == plain.version("extract")


def test_the_extractive_teacher_lists_one_name_per_aspect():
    backend = ExtractiveBackend()
    review = "The performances were superb. The storyline was full of holes."
    assert "storyline" in backend.extract(review).lower()
    named = backend.extract(review, lexicon=WORLD).lower()
    assert "acting" in named and "plot" in named
    assert "performances" not in named and "storyline" not in named


def test_profiles_on_the_synthetic_world_meet_on_the_aspect_names(tmp_path):
    aspects = ["prompt=exp3rt_aspects", *SMALL_WORLD]
    plain = Path(annotate(tmp_path, aspects, "plain")["directory"])
    named = Path(annotate(tmp_path, [*aspects, "prompt.aspect_lexicon=world"], "named")["directory"])
    assert plain != named  # another annotation directory: the extract stage's version differs

    def words(d: Path) -> set[str]:
        text = " ".join(
            pd.concat(
                [pd.read_parquet(d / f"{s}.parquet")["profile"] for s in ("user_profile", "item_profile")]
            )
            .dropna()
            .str.lower()
        )
        return {n for n in other_names() | {a.name for a in vocab_for("movie").aspects} if f"- {n}\n" in text}

    assert words(plain) & other_names()  # the world's reviews do use the other names
    assert not words(named) & other_names()
    assert len(words(named)) >= 8  # the aspects themselves are all still there


def test_an_llm_teacher_is_told_to_name_aspects_in_its_prompt(server, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    args = http_overrides(server, tmp_path, "stage=extract")
    with pytest.raises(ConfigError, match="prompt.aspect_lexicon=null") as e:
        annotate_http(tmp_path, [*args, "prompt.aspect_lexicon=world"])
    assert "teacher.backend=openai" in str(e.value) and server.total == 0
    # the advice, pasted
    assert Path(annotate_http(tmp_path, [*args, "prompt.aspect_lexicon=null"])["directory"]).is_dir()
    assert server.total > 0


def test_the_pipeline_finds_students_trained_before_the_key_existed(tmp_path):
    from exp3rt.pipeline import stage_fingerprints

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="pipeline")
    with_key = stage_fingerprints(cfg, "d", "s")["train"]
    before = OmegaConf.create(OmegaConf.to_container(cfg))  # the config as it was before the key
    del before.prompt["aspect_lexicon"]
    assert stage_fingerprints(before, "d", "s")["train"] == with_key
    before.prompt.aspect_lexicon = "world"
    assert stage_fingerprints(before, "d", "s")["train"] != with_key


def test_an_edited_lexicon_file_is_a_new_student(tmp_path):
    """The train fingerprint reads a lexicon file's content: the same path with other names must not find
    the student trained on the old profiles."""
    from exp3rt.pipeline import stage_fingerprints

    path = tmp_path / "aspects.yaml"
    path.write_text("plot: [story, storyline]\n")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="pipeline", overrides=[f"prompt.aspect_lexicon={path}"])
    first = stage_fingerprints(cfg, "d", "s")["train"]
    assert stage_fingerprints(cfg, "d", "s")["train"] == first
    path.write_text("plot: [story, storyline]\nacting: [cast]\n")
    assert stage_fingerprints(cfg, "d", "s")["train"] != first
