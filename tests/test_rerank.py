"""Reranking by expected rating with the user's prefix shared: equal to plain forwards, rerank order and
metrics."""

from __future__ import annotations

import math

import pytest
import torch

from exp3rt.inference.rerank import (
    _encode,
    common_prefix_len,
    rerank,
    rerank_metrics,
    score_candidates,
)
from exp3rt.student.prompts import StudentPrompts, load_student_prompt
from exp3rt.student.ratings import RATING_PREFIX, RatingTokens
from exp3rt.student.tokenize import render_prompt

TOL = 1e-5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from exp3rt.models.tiny import build_tiny_llama

    folder = build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama", vocab="bpe", hidden=64, layers=2)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def user_prompts(
    tokenizer, ratings: RatingTokens, n: int = 4, reasoning: bool = False
) -> list[tuple[str, str]]:
    """Rating prompts from the project's prompt file: one user profile, items whose parts differ in length."""
    prompts = StudentPrompts(load_student_prompt("exp3rt_v1"), "movie", ratings)
    out = []
    for j in range(n):
        sections = {
            "user_profile": "[Like]\n- Tense plots.\n- Strong acting.\n[Dislike]\n- Slow pacing.",
            "item_description": f"Movie {j}: " + "a heist story with twists. " * (j + 1),
            "item_profile": "[Like]\n- The score.\n" + "- The cast.\n" * j + "[Dislike]\n- The ending.",
        }
        system, user = prompts.rating_messages(sections, reasoning=reasoning)
        out.append((f"item{j}", render_prompt(tokenizer, system, user.text)))
    return out


@torch.inference_mode()
def plain_probs(
    model, tokenizer, text: str, ratings: RatingTokens, prefix: str = RATING_PREFIX
) -> list[float]:
    """Reference: one unbatched full forward per rating sequence, no cache. A rating's probability is the
    chain of its tokens' probabilities; one that is a prefix of a longer rating ("1" of "10") must stop:
    p(1) = P("1")·(1 − P("0" | "1")); renormalised over the ratings."""
    seqs = [list(s) for s in ratings.token_ids(tokenizer, prefix)]
    ids = _encode(tokenizer, text + prefix)

    def next_lp(extra: list[int]) -> torch.Tensor:
        return torch.log_softmax(model(input_ids=torch.tensor([ids + extra])).logits[0, -1].double(), dim=-1)

    scores = []
    for seq in seqs:
        p = math.exp(sum(float(next_lp(seq[:k])[t]) for k, t in enumerate(seq)))
        longer = {s[len(seq)] for s in seqs if len(s) > len(seq) and s[: len(seq)] == seq}
        if longer:
            p *= 1.0 - sum(math.exp(float(next_lp(seq)[t])) for t in longer)
        scores.append(p)
    total = sum(scores)
    return [x / total for x in scores]


def test_prefix_reuse_equals_plain_forward(tiny):
    model, tok = tiny
    ratings = RatingTokens(1, 5)
    cands = user_prompts(tok, ratings, n=4)
    lengths = [len(_encode(tok, p)) for _, p in cands]
    assert len(set(lengths)) == len(lengths)  # suffixes of different lengths: padding is exercised
    stats: dict = {}
    scores = score_candidates(model, tok, {"u1": cands}, ratings, RATING_PREFIX, batch_size=3, stats=stats)
    seqs = [_encode(tok, p + RATING_PREFIX) for _, p in cands]
    assert stats["u1"]["prefix_tokens"] == common_prefix_len(seqs) > 20  # the system + user profile part
    no_reuse = score_candidates(model, tok, {"u1": cands}, ratings, RATING_PREFIX, reuse_prefix=False)
    assert [r[0] for r in scores["u1"]] == [c[0] for c in cands]
    for (item, expected, probs), (_, text), (_, e2, p2) in zip(
        scores["u1"], cands, no_reuse["u1"], strict=True
    ):
        ref = plain_probs(model, tok, text, ratings)
        assert max(abs(a - b) for a, b in zip(probs, ref, strict=True)) < TOL, item
        assert max(abs(a - b) for a, b in zip(probs, p2, strict=True)) < TOL and abs(expected - e2) < TOL
        assert math.isclose(sum(probs), 1.0, abs_tol=1e-9)
        assert 1.0 <= expected <= 5.0
        assert math.isclose(
            expected, sum(p * r for p, r in zip(probs, ratings.ratings, strict=True)), abs_tol=1e-9
        )


def test_multi_token_ratings_chain_and_a_prefix_rating_must_stop(tiny):
    model, tok = tiny
    ratings = RatingTokens(1, 10)  # "10" is "1","0": chained; "1" is "1" not followed by "0"
    cands = user_prompts(tok, ratings, n=2)
    scores = score_candidates(model, tok, {"u": cands}, ratings, RATING_PREFIX, batch_size=7)
    for (_, expected, probs), (_, text) in zip(scores["u"], cands, strict=True):
        ref = plain_probs(model, tok, text, ratings)
        assert max(abs(a - b) for a, b in zip(probs, ref, strict=True)) < TOL
        assert math.isclose(sum(probs), 1.0, abs_tol=1e-9) and 1.0 <= expected <= 10.0


@pytest.mark.parametrize("scale", [(1, 5), (1, 10)])
def test_rerank_scores_equal_the_prediction_readout(tiny, scale):
    """One rule for a rating that is a prefix of another: a reranked candidate's probabilities are the
    predictions' readout (readout_only) on the same prompt — they used to differ on 1-10 ("1" needed EOS
    after it when reranking, only "not 0" when predicting)."""
    from exp3rt.inference.readout import readout_only

    model, tok = tiny
    ratings = RatingTokens(*scale)
    cands = user_prompts(tok, ratings, n=3)
    scores = score_candidates(model, tok, {"u": cands}, ratings, RATING_PREFIX, batch_size=2)["u"]
    reads = readout_only(model, tok, [p for _, p in cands], ratings, RATING_PREFIX)
    for (_, expected, probs), r in zip(scores, reads, strict=True):
        assert max(abs(a - b) for a, b in zip(probs, r.probs, strict=True)) < TOL
        assert abs(expected - r.expected) < TOL


def test_offset_maps_back_to_scale(tiny):
    model, tok = tiny
    ratings = RatingTokens(1, 10, offset=-1)  # written 0-9, one token each
    ((_, expected, probs),) = score_candidates(model, tok, {"u": user_prompts(tok, ratings, n=1)}, ratings)[
        "u"
    ]
    assert len(probs) == 10 and 1.0 <= expected <= 10.0
    assert math.isclose(expected, sum(p * (i + 1) for i, p in enumerate(probs)), abs_tol=1e-9)


def test_full_mode_scores_every_candidate(tiny, monkeypatch):
    """Full mode reasons for all users' candidates together (batches of batch_size prompts, not one
    user's at a time) and reads each rating after its reasoning: the same reasoning and probabilities as
    the predictions' full mode on those prompts."""
    import exp3rt.inference.rerank as rr
    from exp3rt.inference.readout import generate_and_read

    model, tok = tiny
    ratings = RatingTokens(1, 5)
    cands = user_prompts(tok, ratings, n=3, reasoning=True)
    users = {"u": cands, "v": cands[:2], "w": []}
    batches = []
    real = rr.generate_and_read
    monkeypatch.setattr(
        rr,
        "generate_and_read",
        lambda m, t, prompts, *a, **k: batches.append(len(prompts)) or real(m, t, prompts, *a, **k),
    )
    stats: dict = {}
    scores = score_candidates(
        model, tok, users, ratings, mode="full", max_new_tokens=6, batch_size=4, stats=stats
    )
    assert batches == [5]  # one call over both users' five candidates
    assert scores["w"] == [] and stats["w"]["seconds"] == 0.0
    assert stats["u"]["seconds"] == stats["v"]["seconds"] > 0
    reference = generate_and_read(model, tok, [p for _, p in cands], ratings, 6, RATING_PREFIX, batch_size=1)
    for user in ("u", "v"):
        assert [r[0] for r in scores[user]] == [c[0] for c in users[user]]
        reasoning = stats[user]["reasoning"]
        assert set(reasoning) == {c[0] for c in users[user]} and set(stats[user]["finish"].values()) <= {
            "stop",
            "eos",
            "length",
        }
        for (item, expected, probs), (gen, read) in zip(scores[user], reference, strict=False):
            assert 1.0 <= expected <= 5.0 and math.isclose(sum(probs), 1.0, abs_tol=1e-9)
            assert reasoning[item] == gen.text  # batched greedy reasoning = one prompt at a time
            assert max(abs(a - b) for a, b in zip(probs, read.probs, strict=True)) < TOL
            assert abs(expected - read.expected) < TOL


def test_rejects_unknown_mode(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="mode"):
        score_candidates(model, tok, {}, RatingTokens(1, 5), mode="slow")


def test_a_rating_weight_blends_the_rating_with_the_first_stage_position_by_hand():
    # four candidates in first-stage order, expected ratings on a 1-5 scale
    scores = {"u": [("a", 2.0, []), ("b", 3.0, []), ("c", 5.0, []), ("d", 4.6, [])]}
    # beta 1: 1*(r-1)/4 - p/4 -> a 0.25, b 0.25, c 0.5, d 0.15: c first; a and b tie, first-stage order kept
    assert rerank(scores, rating_weight=1.0, scale=(1, 5))["u"] == ["c", "a", "b", "d"]
    # beta 0: the first stage's order; a large beta: the rating order
    assert rerank(scores, rating_weight=0.0, scale=(1, 5))["u"] == ["a", "b", "c", "d"]
    assert rerank(scores, rating_weight=1e6, scale=(1, 5))["u"] == rerank(scores)["u"] == ["c", "d", "b", "a"]
    with pytest.raises(ValueError, match="rating scale"):
        rerank(scores, rating_weight=1.0)


def test_rerank_order_and_metrics_by_hand():
    first = {"a": ["x", "y", "z"], "b": ["p", "q", "r", "s"], "c": ["m", "n"]}
    scores = {
        "a": [("x", 3.0, []), ("y", 3.0, []), ("z", 4.5, [])],  # x and y tie: first-stage order kept
        "b": [("p", 2.0, []), ("q", 4.0, []), ("r", 1.0, []), ("s", 3.0, [])],
        "c": [("m", 1.0, []), ("n", 2.0, [])],
    }
    ranked = rerank(scores)
    assert ranked == {"a": ["z", "x", "y"], "b": ["q", "s", "p", "r"], "c": ["n", "m"]}
    assert rerank(scores, k=2)["b"] == ["q", "s"]
    relevant = {"a": {"z"}, "b": {"q", "s"}, "c": set()}  # c has no relevant item: not evaluated
    m = rerank_metrics(first, ranked, relevant, ks=(1, 5), seconds_per_user={"a": 1.0, "b": 3.0})
    assert m["users"] == 2 and m["users_without_relevant"] == 1

    def inv(i: int) -> float:
        return 1 / math.log2(i)

    # before: a has z at 3; b has q at 2, s at 4
    nd5_a = inv(4)
    nd5_b = (inv(3) + inv(5)) / (1 + inv(3))
    expect = {
        "before/ndcg@1": 0.0,
        "after/ndcg@1": 1.0,
        "before/hit@1": 0.0,
        "after/hit@1": 1.0,
        "before/recall@1": 0.0,
        "after/recall@1": (1 + 0.5) / 2,
        "before/ndcg@5": (nd5_a + nd5_b) / 2,
        "after/ndcg@5": 1.0,
        "before/recall@5": 1.0,
        "after/recall@5": 1.0,
        "before/hit@5": 1.0,
        "after/hit@5": 1.0,
        "time_per_user_s": 2.0,
    }
    for key, value in expect.items():
        assert math.isclose(m[key], value, abs_tol=1e-12), key
    # per-user gains, paired: both users gain a full point at k=1, so every resample does
    assert m["gain/ndcg@1"] == 1.0 and m["gain/ndcg@1_ci_low"] == m["gain/ndcg@1_ci_high"] == 1.0
    assert m["gain/ndcg@1_share_better"] == 1.0
    assert math.isclose(m["gain/ndcg@5"], ((1 - nd5_a) + (1 - nd5_b)) / 2)
    assert m["gain/ndcg@5_ci_low"] <= m["gain/ndcg@5"] <= m["gain/ndcg@5_ci_high"]
    with pytest.raises(ValueError, match="not its candidates"):
        rerank_metrics(first, {"a": ["z", "w"]}, relevant)
