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
    return [
        tok.apply_chat_template(
            [{"role": "user", "content": "The acting was great but the plot was slow. " * k}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for k in sizes
    ]


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
        assert math.isclose(
            r.expected,
            sum(p * v for p, v in zip(r.probs, range(1, scale_max + 1), strict=True)),
            abs_tol=1e-9,
        )
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
    assert any(
        g.in_cache < len(g.new_token_ids) for g in gens
    )  # the last token of a "length" row is appended
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


def test_only_the_last_position_reaches_the_vocabulary(tiny):
    """Prompt passes, decoding steps and readouts project one position per row onto the vocabulary
    (logits_to_keep): never (B, prompt length, V) logits, which for Llama-3 at 1,200 tokens are 0.6 GB a
    row."""
    from exp3rt.inference.rerank import score_candidates

    model, tok = tiny
    widths = []
    hook = model.lm_head.register_forward_hook(lambda mod, inp, out: widths.append(tuple(inp[0].shape[:2])))
    try:
        prompts = _prompts(tok)
        longest = max(len(_ids(tok, p)) for p in prompts)
        gens = generate_batch(model, tok, prompts, 5, keep_state=True)
        read_after(model, tok, gens, RatingTokens(1, 10))
        readout_only(model, tok, prompts, RatingTokens(1, 10))
        score_candidates(model, tok, {"u": list(enumerate(prompts))}, RatingTokens(1, 5), mode="fast")
    finally:
        hook.remove()
    assert longest > 20 and len(widths) > 8
    assert all(w[1] == 1 for w in widths), widths
    assert {w[0] for w in widths} >= {1, 4}  # the shared rerank prefix (one row) and the batches of four


def test_length_groups_bound_padding():
    from exp3rt.inference.generate import length_groups

    lengths = [74, 299, 120, 80, 290, 75, 118, 300]
    groups = length_groups(lengths, slack=0.25)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        width = max(lengths[i] for i in g)
        assert len(g) * width <= 1.25 * sum(lengths[i] for i in g)
    assert [sorted(lengths[i] for i in g) for g in groups] == [[74, 75, 80], [118, 120], [290, 299, 300]]
    assert length_groups(lengths, slack=float("inf")) == [sorted(range(8), key=lambda i: lengths[i])]


def test_grouped_prefill_equals_one_padded_forward(tiny, monkeypatch):
    """Prompts of very different lengths run in length groups whose caches are merged right-aligned:
    the same tokens and readouts as one forward over the whole left-padded batch."""
    import exp3rt.inference.generate as generate

    model, tok = tiny
    prompts = _prompts(tok, (1, 12, 2, 11, 6))
    ratings = RatingTokens(1, 10)
    calls = []
    real = generate.forward_step
    monkeypatch.setattr(generate, "forward_step", lambda *a, **k: calls.append(a[2].shape) or real(*a, **k))
    grouped = generate_and_read(model, tok, prompts, ratings, 12, batch_size=5)
    assert len([c for c in calls if c[1] > 1]) >= 2  # the prompt pass ran as several groups
    calls.clear()
    monkeypatch.setattr(generate, "PREFILL_SLACK", float("inf"))
    single = generate_and_read(model, tok, prompts, ratings, 12, batch_size=5)
    assert len([c for c in calls if c[1] > 1]) == 1
    for (g1, r1), (g2, r2) in zip(grouped, single, strict=True):
        assert g1.new_token_ids == g2.new_token_ids and g1.stop_reason == g2.stop_reason
        assert max(abs(a - b) for a, b in zip(r1.probs, r2.probs, strict=True)) < 1e-5


def test_reserved_cache_layer_matches_concatenation(tiny, automatic_kv_cache):
    """The in-place KV layer holds what DynamicLayer's concatenation holds, through growth past its
    reserve, crops, batch selection and a deep copy."""
    import copy

    from transformers.cache_utils import DynamicLayer

    from exp3rt.inference.kv_cache import _reserved_layer_class, new_cache

    model, _ = tiny
    assert all(type(layer).__name__ == "ReservedLayer" for layer in new_cache(model, 8).layers)
    ref, res = DynamicLayer(), _reserved_layer_class()(reserve=5)
    gen = torch.Generator().manual_seed(0)

    def step(n, batch=3):
        k, v = torch.randn(batch, 2, n, 4, generator=gen), torch.randn(batch, 2, n, 4, generator=gen)
        out_ref, out_res = ref.update(k, v), res.update(k, v)
        for a, b in zip(out_ref, out_res, strict=True):
            assert torch.equal(a, b)

    step(4)
    step(1)
    step(3)  # past the reserve of 5: the buffer grows
    assert res.get_seq_length() == 8 and res._kbuf.shape[2] >= 8
    buffer = res._kbuf
    ref.crop(-2)
    res.crop(-2)
    step(1)
    assert res._kbuf is buffer  # a crop keeps the buffer: the next token is written in place
    ref.batch_select_indices(torch.tensor([2, 0]))
    res.batch_select_indices(torch.tensor([2, 0]))
    step(2, batch=2)
    res2 = copy.deepcopy(res)
    ref2 = copy.deepcopy(ref)
    ref, res = ref2, res2
    step(1, batch=2)
    assert torch.equal(ref.values, res.values) and res.get_seq_length() == 10


@pytest.fixture
def automatic_kv_cache(monkeypatch):
    """The KV cache decided afresh with EXP3RT_KV_CACHE unset (and again after the test)."""
    from exp3rt.inference import kv_cache

    monkeypatch.delenv(kv_cache.ENV, raising=False)
    kv_cache.cache_kind.cache_clear()
    yield kv_cache
    kv_cache.cache_kind.cache_clear()


def _generate_and_read_kept(model, tok, prompts, ratings):
    """Greedy batched generation (grouped prompt pass, one row stopping early) and the cached readout,
    with the cache each batch used."""
    first = generate_batch(model, tok, prompts[:1], 12)[0]
    gens = generate_batch(
        model, tok, prompts, 12, stop=[tok.decode(first.new_token_ids[4:7])], keep_state=True
    )
    reads = read_after(model, tok, gens, ratings)
    return gens, reads, {type(layer).__name__ for g in gens for layer in g.state.cache.layers}


def test_plain_kv_cache_switch_gives_the_same_tokens_and_readouts(tiny, automatic_kv_cache, monkeypatch):
    """EXP3RT_KV_CACHE=plain: transformers' own DynamicLayers, and the same greedy tokens and rating
    probabilities as the in-place cache."""
    from transformers.cache_utils import DynamicLayer

    kv_cache = automatic_kv_cache
    model, tok = tiny
    prompts = _prompts(tok, (1, 12, 2, 11, 6))  # several length groups: the merged prompt cache too
    ratings = RatingTokens(1, 10)
    assert kv_cache.cache_kind() == "in_place"
    in_place, in_place_reads, in_place_layers = _generate_and_read_kept(model, tok, prompts, ratings)
    monkeypatch.setenv(kv_cache.ENV, "plain")
    kv_cache.cache_kind.cache_clear()
    assert kv_cache.cache_kind() == "plain"
    layers = kv_cache.new_cache(model, 8).layers
    assert len(layers) == model.config.num_hidden_layers and all(type(la) is DynamicLayer for la in layers)
    plain, plain_reads, plain_layers = _generate_and_read_kept(model, tok, prompts, ratings)
    assert in_place_layers == {"ReservedLayer"} and plain_layers == {"DynamicLayer"}
    assert in_place[0].stop_reason == "stop" and any(g.stop_reason == "length" for g in in_place)
    for a, b, ra, rb in zip(in_place, plain, in_place_reads, plain_reads, strict=True):
        assert a.new_token_ids == b.new_token_ids and a.stop_reason == b.stop_reason and a.text == b.text
        assert len(ra.probs) == 10 and max(abs(x - y) for x, y in zip(ra.probs, rb.probs, strict=True)) < 1e-6


def test_kv_cache_falls_back_when_dynamic_layer_changes(automatic_kv_cache, monkeypatch, caplog):
    """A transformers whose DynamicLayer lacks a method the in-place layer relies on: the plain cache, and
    one warning that names what is missing."""
    import logging

    from transformers.cache_utils import DynamicLayer

    kv_cache = automatic_kv_cache
    assert kv_cache.cache_kind() == "in_place"
    kv_cache.cache_kind.cache_clear()
    monkeypatch.delattr(DynamicLayer, "lazy_initialization")  # what is left is the mixin's abstract one
    with caplog.at_level(logging.WARNING, logger=kv_cache.__name__):
        assert kv_cache.cache_kind() == "plain"
        assert kv_cache.cache_kind() == "plain"  # decided once: one warning
    warnings = [r.getMessage() for r in caplog.records if r.name == kv_cache.__name__]
    assert warnings == [
        "transformers' DynamicLayer has no lazy_initialization, so generation falls back to transformers' "
        "DynamicCache (slower decoding, same results)"
    ]


def test_kv_cache_falls_back_outside_the_tested_transformers_range(automatic_kv_cache, monkeypatch, caplog):
    import logging

    from packaging.version import Version

    from exp3rt import versions

    kv_cache = automatic_kv_cache
    monkeypatch.setattr(versions, "tested_ranges", lambda: {"transformers": "<6,>=5.0"})
    monkeypatch.setattr(versions, "_installed", lambda name: Version("6.1.0"))
    with caplog.at_level(logging.WARNING, logger=kv_cache.__name__):
        assert kv_cache.cache_kind() == "plain"
    assert [r.getMessage() for r in caplog.records if r.name == kv_cache.__name__] == [
        "transformers 6.1.0 is outside the range exp3rt was tested with (<6,>=5.0), so generation falls back "
        "to transformers' DynamicCache (slower decoding, same results)"
    ]
    kv_cache.cache_kind.cache_clear()
    monkeypatch.setattr(versions, "tested_ranges", lambda: {})  # an uninstalled tree: the API check decides
    assert kv_cache.cache_kind() == "in_place"


def test_sorted_batches_keep_the_input_order(tiny):
    model, tok = tiny
    prompts = _prompts(tok, (9, 1, 4, 12, 2))
    ratings = RatingTokens(1, 5)
    plain = generate_and_read(model, tok, prompts, ratings, 6, batch_size=2, sort_by_length=False)
    by_length = generate_and_read(model, tok, prompts, ratings, 6, batch_size=2)
    fast_plain = readout_only(model, tok, prompts, ratings, batch_size=2, sort_by_length=False)
    fast = readout_only(model, tok, prompts, ratings, batch_size=2)
    for (g1, r1), (g2, r2), f1, f2, p in zip(plain, by_length, fast_plain, fast, prompts, strict=True):
        assert g1.prompt_ids == g2.prompt_ids == _ids(tok, p) and g1.new_token_ids == g2.new_token_ids
        assert max(abs(a - b) for a, b in zip(r1.probs, r2.probs, strict=True)) < 1e-5
        assert max(abs(a - b) for a, b in zip(f1.probs, f2.probs, strict=True)) < 1e-5


def test_offset_is_inverted(tiny):
    model, tok = tiny
    ratings = RatingTokens(1, 10, offset=-1)  # the paper's IMDB: written 0-9, one token each
    assert ratings.texts[0] == "0" and ratings.texts[-1] == "9"
    prompts = _prompts(tok, (2, 5))
    seqs = ratings.token_ids(tok, RATING_PREFIX)
    assert ratings.single_token
    for p, r in zip(prompts, readout_only(model, tok, prompts, ratings), strict=True):
        with torch.no_grad():
            logits = (
                model(input_ids=torch.tensor([_ids(tok, p) + _ids(tok, RATING_PREFIX)]))
                .logits[0, -1]
                .double()
            )
        q = torch.softmax(logits, -1)[[s[0] for s in seqs]]
        q = (q / q.sum()).tolist()
        assert r.ratings == tuple(float(v) for v in range(1, 11))
        assert max(abs(a - b) for a, b in zip(r.probs, q, strict=True)) < 1e-5
        # written "k" is rating k+1: the expectation is on the dataset's 1-10 scale, not 0-9
        assert math.isclose(r.expected, sum(qi * (i + 1) for i, qi in enumerate(q)), abs_tol=1e-5)
        assert r.most_likely == float(max(range(10), key=lambda i: q[i]) + 1)
    assert (
        parse_rating("Reasoning: fine.\nPredicted User Rating: 9", 1, 10, from_text=ratings.from_text) == 10.0
    )
    assert parse_rating("Predicted User Rating: 0", 1, 10, from_text=ratings.from_text) == 1.0


def test_generate_and_read(tiny):
    model, tok = tiny
    ratings = RatingTokens(1, 5)
    out = generate_and_read(model, tok, _prompts(tok), ratings, max_new_tokens=6, batch_size=3)
    assert len(out) == 4 and all(g.state is None for g, _ in out)
    assert all(math.isclose(sum(r.probs), 1.0, abs_tol=1e-9) and 1 <= r.expected <= 5 for _, r in out)


def test_a_rewrite_between_reasoning_and_readout_reads_the_rewritten_text(tiny):
    """generate_and_read(rewrite=...): a reasoning the tool changes is read after the new text, exactly as
    the fast readout reads prompt + that text, wherever the change is; a reasoning it leaves alone keeps its
    cached readout."""
    model, tok = tiny
    ratings = RatingTokens(1, 5)
    prompts = _prompts(tok)
    plain = generate_and_read(model, tok, prompts, ratings, max_new_tokens=6, batch_size=3)
    edited = " Estimate: 4.5."

    def tool(text: str) -> str:
        """Appends to the first reasoning, replaces the second's first word (a change before cached
        tokens: those must be run again), leaves the others alone."""
        if text == plain[0][0].text:
            return text + edited
        if text == plain[1][0].text:
            return " ".join(["great", *text.split(" ")[1:]])
        return text

    out = generate_and_read(model, tok, prompts, ratings, max_new_tokens=6, batch_size=3, rewrite=tool)
    for k, ((g0, r0), (g, r)) in enumerate(zip(plain, out, strict=True)):
        if tool(g0.text) == g0.text:
            assert g.written is None and g.text == g0.text and r.probs == pytest.approx(r0.probs)
            continue
        assert g.written == g0.text and g.text == tool(g0.text)
        expect = readout_only(model, tok, [prompts[k] + g.text + "\n"], ratings)[0]
        assert r.probs == pytest.approx(expect.probs) and r.probs != pytest.approx(r0.probs), k


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
