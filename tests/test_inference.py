"""Inference core on the tiny offline Llama: batched generation, the cached rating readout, fallbacks."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from exp3rt.inference.generate import generate_batch  # noqa: E402
from exp3rt.inference.parse import FALLBACK_POLICIES, apply_fallback, apply_fallbacks, parse_rating  # noqa: E402
from exp3rt.inference.readout import generate_and_read, read_after, readout_only  # noqa: E402
from exp3rt.student.ratings import RATING_PREFIX, RatingTokens  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from exp3rt.models.tiny import build_tiny_llama

    path = build_tiny_llama(tmp_path_factory.mktemp("tiny"), vocab="bpe", hidden=64, layers=2)
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    return model, tok


def _prompts(tok, sizes=(1, 4, 9, 2)):
    return [tok.apply_chat_template([{"role": "user", "content": "The acting was great but the plot was slow. " * k}],
                                    add_generation_prompt=True, tokenize=False) for k in sizes]


def _ids(tok, text):
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _scratch_probs(model, tok, ratings: RatingTokens, context_ids: list[int]) -> list[float]:
    """Rating probabilities from uncached forwards over the full context (the chain rule by hand)."""
    seqs = ratings.token_ids(tok, RATING_PREFIX)
    with torch.no_grad():
        def next_probs(ids):
            return torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1)

        root = next_probs(context_ids)
        scores = []
        for s in seqs:
            p = root[s[0]]
            for k in range(1, len(s)):
                p = p * next_probs(context_ids + s[:k])[s[k]]
            longer = [t for t in seqs if len(t) > len(s) and t[: len(s)] == s]
            if longer:
                p = p * (1 - sum(next_probs(context_ids + s)[t[len(s)]] for t in {tuple(x) for x in longer}))
            scores.append(float(p))
    total = sum(scores)
    return [x / total for x in scores]


# ------------------------------------------------------------------------------- generation


def test_batched_greedy_equals_one_by_one(tiny):
    model, tok = tiny
    prompts = _prompts(tok)
    alone = [generate_batch(model, tok, [p], max_new_tokens=12)[0] for p in prompts]
    # make one row end at EOS mid-batch: its 5th greedy token becomes an extra EOS id
    eos_extra = alone[1].new_token_ids[4]
    cfg = model.generation_config
    old = cfg.eos_token_id
    cfg.eos_token_id = [tok.eos_token_id, eos_extra]
    try:
        alone = [generate_batch(model, tok, [p], max_new_tokens=12)[0] for p in prompts]
        batched = generate_batch(model, tok, prompts, max_new_tokens=12, batch_size=4)
        split = generate_batch(model, tok, prompts, max_new_tokens=12, batch_size=3)
    finally:
        cfg.eos_token_id = old
    assert len({len(_ids(tok, p)) for p in prompts}) == 4  # really different lengths (left padding used)
    assert alone[1].stop_reason == "eos" and len(alone[1].new_token_ids) <= 4
    assert any(o.stop_reason == "length" and len(o.new_token_ids) == 12 for o in alone)
    for a, b, c in zip(alone, batched, split, strict=True):
        assert a.new_token_ids == b.new_token_ids == c.new_token_ids
        assert a.text == b.text == c.text and a.stop_reason == b.stop_reason
        assert eos_extra not in b.new_token_ids and tok.eos_token_id not in b.new_token_ids


def test_seeded_sampling_reproducible(tiny):
    model, tok = tiny
    prompts = _prompts(tok, (1, 3))
    a = generate_batch(model, tok, prompts, 10, do_sample=True, temperature=1.5, seed=7)
    b = generate_batch(model, tok, prompts, 10, do_sample=True, temperature=1.5, seed=7)
    c = generate_batch(model, tok, prompts, 10, do_sample=True, temperature=1.5, seed=0)  # seed 0 is a seed
    greedy = generate_batch(model, tok, prompts, 10)
    assert [o.new_token_ids for o in a] == [o.new_token_ids for o in b]
    assert [o.new_token_ids for o in a] != [o.new_token_ids for o in c]
    assert [o.new_token_ids for o in a] != [o.new_token_ids for o in greedy]


def test_stop_string_cuts_before_it(tiny):
    model, tok = tiny
    prompts = _prompts(tok)
    first = generate_batch(model, tok, prompts[:1], 12)[0]
    stop = tok.decode(first.new_token_ids[5:8])
    out = generate_batch(model, tok, prompts, 12, stop=[stop])
    assert out[0].stop_reason == "stop" and stop not in out[0].text
    assert first.text.startswith(out[0].text) and len(out[0].new_token_ids) <= 5


# ------------------------------------------------------------------------------- readout


@pytest.mark.parametrize("scale_max", [5, 10])
def test_readout_probabilities(tiny, scale_max):
    model, tok = tiny
    ratings = RatingTokens(1, scale_max)
    seqs = ratings.token_ids(tok, RATING_PREFIX)
    assert ratings.single_token == (scale_max == 5)
    if scale_max == 10:
        assert len(seqs[-1]) == 2 and seqs[-1][0] == seqs[0][0]  # "10" = "1", "0"
    for r in readout_only(model, tok, _prompts(tok), ratings, batch_size=3):
        assert len(r.probs) == scale_max and math.isclose(sum(r.probs), 1.0, abs_tol=1e-9)
        assert all(p >= 0 for p in r.probs)
        assert 1 <= r.expected <= scale_max and 0 < r.mass <= 1
        assert math.isclose(r.expected, sum(p * v for p, v in zip(r.probs, range(1, scale_max + 1), strict=True)), abs_tol=1e-9)
        assert r.most_likely == 1 + max(range(scale_max), key=lambda i: r.probs[i])


@pytest.mark.parametrize("scale_max", [5, 10])
def test_cached_readout_equals_from_scratch(tiny, scale_max):
    model, tok = tiny
    ratings = RatingTokens(1, scale_max)
    prompts = _prompts(tok)
    first = generate_batch(model, tok, prompts[:1], 10)[0]
    stop = tok.decode(first.new_token_ids[4:7])  # row 0 stops early: cached tokens after it must be masked
    gens = generate_batch(model, tok, prompts, 10, stop=[stop], keep_state=True)
    assert gens[0].stop_reason == "stop" and any(g.stop_reason == "length" for g in gens)
    assert any(g.in_cache < len(g.new_token_ids) for g in gens)  # the last token of a "length" row is appended
    cached = read_after(model, tok, gens, ratings)
    again = read_after(model, tok, gens[::-1], ratings)[::-1]  # the cache is restored: reading twice agrees
    for g, r, r2 in zip(gens, cached, again, strict=True):
        sep = _ids(tok, "\n") if g.new_token_ids and not g.text.endswith("\n") else []
        context = g.prompt_ids + g.new_token_ids + sep + _ids(tok, RATING_PREFIX)
        ref = _scratch_probs(model, tok, ratings, context)
        assert max(abs(a - b) for a, b in zip(r.probs, ref, strict=True)) < 1e-5
        assert max(abs(a - b) for a, b in zip(r.probs, r2.probs, strict=True)) < 1e-9
    fast = readout_only(model, tok, prompts, ratings)
    for p, r in zip(prompts, fast, strict=True):
        ref = _scratch_probs(model, tok, ratings, _ids(tok, p) + _ids(tok, RATING_PREFIX))
        assert max(abs(a - b) for a, b in zip(r.probs, ref, strict=True)) < 1e-5


def test_offset_is_inverted(tiny):
    model, tok = tiny
    ratings = RatingTokens(1, 10, offset=-1)  # the paper's IMDB: written 0-9, one token each
    assert ratings.texts[0] == "0" and ratings.texts[-1] == "9"
    prompts = _prompts(tok, (2, 5))
    seqs = ratings.token_ids(tok, RATING_PREFIX)
    assert ratings.single_token
    for p, r in zip(prompts, readout_only(model, tok, prompts, ratings), strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([_ids(tok, p) + _ids(tok, RATING_PREFIX)])).logits[0, -1].double()
        q = torch.softmax(logits, -1)[[s[0] for s in seqs]]
        q = (q / q.sum()).tolist()
        assert r.ratings == tuple(float(v) for v in range(1, 11))
        assert max(abs(a - b) for a, b in zip(r.probs, q, strict=True)) < 1e-5
        # written "k" is rating k+1: the expectation is on the dataset's 1-10 scale, not 0-9
        assert math.isclose(r.expected, sum(qi * (i + 1) for i, qi in enumerate(q)), abs_tol=1e-5)
        assert r.most_likely == float(max(range(10), key=lambda i: q[i]) + 1)
    assert parse_rating("Reasoning: fine.\nPredicted User Rating: 9", 1, 10, from_text=ratings.from_text) == 10.0
    assert parse_rating("Predicted User Rating: 0", 1, 10, from_text=ratings.from_text) == 1.0


def test_generate_and_read(tiny):
    model, tok = tiny
    ratings = RatingTokens(1, 5)
    out = generate_and_read(model, tok, _prompts(tok), ratings, max_new_tokens=6, batch_size=3)
    assert len(out) == 4 and all(g.state is None for g, _ in out)
    assert all(math.isclose(sum(r.probs), 1.0, abs_tol=1e-9) and 1 <= r.expected <= 5 for _, r in out)


# ------------------------------------------------------------------------------- parsing and fallbacks


def test_parse_rating():
    assert parse_rating("Reasoning: good.\nPredicted User Rating: 4", 1, 5) == 4.0
    assert parse_rating("Predicted User Rating:3.5", 1, 5) == 3.5
    assert parse_rating("Predicted User Rating: 7", 1, 5) is None  # off the scale
    assert parse_rating("I would say four", 1, 5) is None
    assert parse_rating(None, 1, 5) is None
    from exp3rt.student.lightning import parse_rating as moved

    assert moved is parse_rating


def test_fallback_policies():
    means = {"user_mean": 4.5, "item_mean": 2.0, "global_mean": 3.5}
    for policy in FALLBACK_POLICIES:
        kept = apply_fallback(2.0, policy, 4.5, 2.0, 3.5)
        assert kept.value == 2.0 and kept.fallback is False
        failed = apply_fallback(None, policy, 4.5, 2.0, 3.5)
        assert failed.fallback is True
        assert failed.value == means.get(policy)  # exclude -> None
        assert apply_fallback(float("nan"), policy, 4.5, 2.0, 3.5) == failed
    assert apply_fallback(None, "user_mean", None, 2.0, 3.5).value == 3.5  # cold user -> global mean
    assert apply_fallback(None, "item_mean", 4.5, float("nan"), 3.5).value == 3.5
    with pytest.raises(ValueError, match="unknown rating fallback policy"):
        apply_fallback(None, "zero")
    with pytest.raises(ValueError, match="needs a mean"):
        apply_fallback(None, "global_mean")
    report = apply_fallbacks([4.0, None, 2.0, None], "user_mean", [1.0, 5.0, 3.0, None], global_mean=3.0)
    assert report.values == [4.0, 5.0, 2.0, 3.0] and report.failures == 2 and report.excluded == 0
    excl = apply_fallbacks([4.0, None, None], "exclude")
    assert excl.values == [4.0, None, None] and excl.failures == 2 and excl.excluded == 2
    assert math.isclose(excl.failure_rate, 2 / 3)
