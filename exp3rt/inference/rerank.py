"""Rerank a first-stage retriever's candidates by the student's expected rating, sharing each user's prefix.

For one user every candidate prompt starts with the same text (system message, user profile) and differs
in the item part (description, item profile, instruction). :func:`score_candidates` tokenises all the
user's prompts, runs their longest common token prefix **once** (``use_cache=True``), and then runs every
candidate's remaining tokens as one right-padded batch against a copy of that KV cache expanded to the
batch. The attention mask covers prefix + suffix (ones over the prefix and each row's real tokens, zeros
over its padding; padding sits after the real tokens, so the causal mask already hides it from them) and
each row's logits are read at its own last real position.

Modes:

* ``"fast"`` — the readout right after ``prompt + rating_prefix``: the next-token distribution over the
  rating tokens, renormalised over the valid ratings. When a rating is several tokens (``"10"`` is
  ``"1"``, ``"0"``) its probability is the chain of its tokens' probabilities, each read after the ones
  before it; a rating whose tokens are a proper prefix of another's must not continue into it
  (``p(1) = P("1")·(1 − P("0" | "1"))``) — the rule of :mod:`exp3rt.inference.readout`, so a candidate's
  score equals the prediction readout on the same text. The expected rating is Σ p·r over
  :attr:`RatingTokens.ratings` (the text mapped back with
  ``from_text``, i.e. with the rating offset undone).
* ``"full"`` — the student first writes its reasoning, all users' candidates in greedy batches of similar
  prompt length (:func:`exp3rt.inference.readout.generate_and_read`: left padding, KV cache, stopped
  where it writes ``rating_prefix``, EOS or ``max_new_tokens``), then the readout continues each row's
  cache — the same numbers as the predictions' full mode on the same prompt.

:func:`rerank` orders each user's candidates by expected rating (ties keep the first-stage order);
:func:`rerank_metrics` compares nDCG/Recall/Hit@k before and after.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Hashable, Mapping, Sequence

import torch

from exp3rt.inference.generate import _cache_kwarg, forward_accepts
from exp3rt.inference.readout import _Trie, generate_and_read
from exp3rt.metrics import paired_gain, per_user, topk_metrics
from exp3rt.student.ratings import RATING_PREFIX, RatingTokens

MODES = ("fast", "full")

Scores = dict[Hashable, list[tuple[Hashable, float, list[float]]]]


# ----------------------------------------------------------------------------------------- helpers


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by every sequence."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs[1:]):
            return i
    return n


class _Paths:
    """The token paths to read for the rating readout: the trie of the ratings' continuation ids.

    ``nodes`` are ``()`` (the position right after the rating prefix) and the ratings' proper prefixes
    (``"1"`` for 1-10). The probabilities are :mod:`exp3rt.inference.readout`'s: a rating's chain of
    token probabilities, times ``1 - P(continue)`` when it is a prefix of a longer rating
    (``p(1) = P("1")·(1 − P("0" | "1"))``), renormalised over the valid ratings — the same numbers as
    the predictions' readout."""

    def __init__(self, tokenizer, ratings: RatingTokens, rating_prefix: str):
        ids = [list(x) for x in ratings.token_ids(tokenizer, rating_prefix)]
        self.sequences = ids
        self.trie = _Trie(ids)
        self.nodes = [(), *self.trie.inner]
        self.index = {node: k for k, node in enumerate(self.nodes)}

    def probabilities(self, logprobs: torch.Tensor) -> torch.Tensor:
        """``logprobs`` (n_nodes, vocab) → renormalised probabilities over the ratings (float64)."""
        scores = self.trie.scores({node: logprobs[k][None].double() for k, node in enumerate(self.nodes)})[0]
        return scores / scores.sum().clamp(min=1e-300)


def _expand(cache, batch: int):
    """A copy of a batch-1 KV cache repeated ``batch`` times (the original stays untouched for reuse)."""
    out = copy.deepcopy(cache)
    if batch > 1:
        out.batch_repeat_interleave(batch)
    return out


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _out_cache(out):
    found = out.get("cache", None)
    return found if found is not None else out.get("past_key_values", None)


@torch.inference_mode()
def _prefix_cache(model, prefix: list[int]):
    """Run the shared prefix once; ``None`` when it is empty."""
    if not prefix:
        return None
    dev = _device(model)
    extra = (
        {"logits_to_keep": 1} if forward_accepts(model, "logits_to_keep") else {}
    )  # only the cache is needed
    out = model(
        input_ids=torch.tensor([prefix], device=dev),
        attention_mask=torch.ones(1, len(prefix), dtype=torch.long, device=dev),
        use_cache=True,
        **extra,
    )
    return _out_cache(out)


@torch.inference_mode()
def _last_logprobs(model, rows: list[list[int]], prefix_len: int, cache, pad_id: int) -> torch.Tensor:
    """Log-softmax (float32) of the next token after each row, the rows continuing ``cache`` (the prefix of
    length ``prefix_len``; ``None`` and 0 without one). Rows are right-padded; one batch."""
    dev = _device(model)
    lengths = [len(r) for r in rows]
    width = max(lengths)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=dev)
    mask = torch.zeros(len(rows), prefix_len + width, dtype=torch.long, device=dev)
    mask[:, :prefix_len] = 1
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[b, prefix_len : prefix_len + len(r)] = 1
    positions = torch.arange(prefix_len, prefix_len + width, device=dev).expand(len(rows), -1)
    last = torch.tensor(lengths, device=dev).unsqueeze(1) - 1  # (B, 1): each row's last real position
    kwargs = {_cache_kwarg(model): _expand(cache, len(rows))} if cache is not None else {}
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=cache is not None,
        logits_to_keep=last,
        **kwargs,
    )
    logits = out.logits
    if logits.dim() == 3:  # (B, 1, V)
        logits = logits[:, -1] if logits.shape[1] == 1 else logits[torch.arange(len(rows)), last.squeeze(1)]
    return torch.log_softmax(logits.float(), dim=-1)


def _readout(
    model, tokenizer, texts: list[str], paths: _Paths, batch_size: int, reuse_prefix: bool, info: dict
) -> list[list[float]]:
    """Rating probabilities for each full text (prompt … + rating prefix) of one user."""
    seqs = [_encode(tokenizer, t) for t in texts]
    if any(not s for s in seqs):
        raise ValueError("an empty prompt cannot be scored")
    # each row keeps >= 1 token; one text with one readout position gains nothing from a separate prefix pass
    share = reuse_prefix and len(seqs) * len(paths.nodes) > 1
    plen = min(common_prefix_len(seqs), min(len(s) for s in seqs) - 1) if share else 0
    cache = _prefix_cache(model, seqs[0][:plen])
    info["prefix_tokens"] = plen
    info["suffix_tokens"] = sum(len(s) - plen for s in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    rows = [(c, s[plen:] + list(node)) for c, s in enumerate(seqs) for node in paths.nodes]
    lp = []
    for start in range(0, len(rows), max(1, int(batch_size))):
        chunk = rows[start : start + max(1, int(batch_size))]
        lp.append(_last_logprobs(model, [r for _, r in chunk], plen, cache if plen else None, pad))
    logprobs = torch.cat(lp).view(len(seqs), len(paths.nodes), -1)
    return [paths.probabilities(logprobs[c]).tolist() for c in range(len(seqs))]


# ----------------------------------------------------------------------------------------- scoring


def score_candidates(
    model,
    tokenizer,
    prompts_by_user: Mapping[Hashable, Sequence[tuple[Hashable, str]]],
    ratings: RatingTokens,
    rating_prefix: str = RATING_PREFIX,
    mode: str = "fast",
    max_new_tokens: int = 256,
    batch_size: int = 32,
    reuse_prefix: bool = True,
    stats: dict | None = None,
    rewrite=None,
) -> Scores:
    """``{user: [(item_id, expected_rating, probs), ...]}`` in the input (first-stage) order.

    ``prompts_by_user[user]`` lists ``(item_id, prompt_text)`` — the chat-rendered rating prompt ending with
    the generation prompt (:func:`exp3rt.student.tokenize.render` with ``add_answer=False``). ``probs`` are
    the renormalised probabilities of :attr:`RatingTokens.texts` (same order); the expected rating is on the
    dataset's scale. ``batch_size`` caps the rows of one forward (candidates × readout positions).
    ``reuse_prefix=False`` runs every prompt whole (the reference, and the benchmark's comparison); it
    concerns the fast readout only (full mode's batch of reasonings shares no prefix cache).
    ``stats`` (optional) receives per user ``seconds``, ``prefix_tokens``, ``suffix_tokens`` and, in full
    mode, ``reasoning`` ({item: text}) and ``finish``. ``rewrite``: full mode's tool between the
    reasoning and the readout (:func:`exp3rt.inference.readout.generate_and_read`). Full mode reasons
    over all users' candidates at once (``batch_size`` prompts per batch, similar lengths together, as
    vLLM schedules them), so a user's ``seconds`` there is an equal share of the whole.
    """
    if mode not in MODES:
        raise ValueError(f"rerank mode must be one of {MODES} (got {mode!r})")
    was_training = model.training
    model.eval()
    paths = _Paths(tokenizer, ratings, rating_prefix)
    values = [ratings.from_text(t) for t in ratings.texts]
    out: Scores = {}
    cands_by_user = {user: list(cands) for user, cands in prompts_by_user.items()}
    for user, cands in cands_by_user.items():
        items = [c[0] for c in cands]
        if len(set(items)) != len(items):
            raise ValueError(f"user {user!r} has duplicate candidate items")

    def scored(items, probs):
        return [
            (item, float(sum(p * v for p, v in zip(pr, values, strict=True))), pr)
            for item, pr in zip(items, probs, strict=True)
        ]

    try:
        if mode == "full":
            # every user's candidates reason together, in batches of batch_size prompts of similar length
            # (a user's 20 alone would pay a whole reasoning's decoding steps for 20 rows), and each readout
            # continues its row's cache: exactly the predictions' full mode (generate_and_read)
            rows = [(user, item, prompt) for user, cands in cands_by_user.items() for item, prompt in cands]
            t0 = time.perf_counter()
            pairs = (
                generate_and_read(
                    model,
                    tokenizer,
                    [p for _, _, p in rows],
                    ratings,
                    int(max_new_tokens),
                    rating_prefix,
                    batch_size=max(1, int(batch_size)),
                    rewrite=rewrite,
                )
                if rows
                else []
            )
            share = (time.perf_counter() - t0) / max(1, sum(1 for c in cands_by_user.values() if c))
            by_user: dict = {user: [] for user in cands_by_user}
            for (user, item, _), (g, r) in zip(rows, pairs, strict=True):
                by_user[user].append((item, g, r))
            for user, got in by_user.items():
                out[user] = scored([item for item, _, _ in got], [list(r.probs) for _, _, r in got])
                if stats is not None:
                    stats[user] = {
                        "reasoning": {item: g.text for item, g, _ in got},
                        "finish": {item: g.stop_reason for item, g, _ in got},
                        "seconds": share if got else 0.0,
                    }
            return out
        for user, cands in cands_by_user.items():
            info: dict = {}
            t0 = time.perf_counter()
            if not cands:
                out[user] = []
                continue
            items = [c[0] for c in cands]
            probs = _readout(
                model, tokenizer, [c[1] + rating_prefix for c in cands], paths, batch_size, reuse_prefix, info
            )
            out[user] = scored(items, probs)
            info["seconds"] = time.perf_counter() - t0
            if stats is not None:
                stats[user] = info
    finally:
        model.train(was_training)
    return out


# ----------------------------------------------------------------------------------------- ranking


def rerank(
    scores: Mapping[Hashable, Sequence[tuple]],
    k: int | None = None,
    rating_weight: float | None = None,
    scale: tuple[float, float] | None = None,
) -> dict[Hashable, list]:
    """Each user's items, best first; ``k`` keeps the top ``k``. ``scores[user]`` lists the candidates in
    their first-stage order.

    * ``rating_weight`` None: by expected rating, highest first; ties keep the first-stage order.
    * ``rating_weight`` β: by ``β·(E[r] − lo)/(hi − lo) − p/n``, the expected rating scaled onto [0, 1] by
      the rating ``scale`` (lo, hi) against the first-stage position ``p`` (0 first) of the ``n`` scored
      candidates: β = 1 lets the whole rating scale move an item across the whole list; β → 0 keeps the
      first stage's order, β → ∞ is the rating order. The retriever knows what a user is likely to pick, the
      rating what they will like once they have: a blend can beat either where both matter.
    """
    if rating_weight is not None and scale is None:
        raise ValueError("rerank: a rating_weight needs the rating scale (lo, hi)")
    out = {}
    for user, rows in scores.items():
        n = max(1, len(rows))
        if rating_weight is None:
            keys = [(-float(rows[i][1]), i) for i in range(len(rows))]
        else:
            lo, hi = float(scale[0]), float(scale[1])
            span = (hi - lo) or 1.0
            keys = [
                (-(float(rating_weight) * (float(rows[i][1]) - lo) / span - i / n), i)
                for i in range(len(rows))
            ]
        order = [i for _, i in sorted(keys)]
        ranked = [rows[i][0] for i in order]
        out[user] = ranked if k is None else ranked[: int(k)]
    return out


def rerank_metrics(
    first_stage: Mapping[Hashable, Sequence],
    reranked: Mapping[Hashable, Sequence],
    relevant: Mapping[Hashable, set],
    ks: Sequence[int] = (1, 5, 10),
    seconds_per_user: Mapping[Hashable, float] | float | None = None,
) -> dict:
    """``before/<metric>@k`` (the first-stage order) and ``after/<metric>@k`` (reranked) for nDCG, Recall
    and Hit, over the users with relevant items (``users``); ``gain/ndcg@k`` (after − before, the mean over
    those users) with its paired bootstrap interval ``gain/ndcg@k_ci_low``/``_ci_high`` and
    ``_share_better``; ``time_per_user_s`` when timings are given (a mean of ``{user: seconds}`` or one
    number). A reranked list must hold only the user's candidates."""
    for user, items in reranked.items():
        extra = set(items) - set(first_stage.get(user, ()))
        if extra:
            raise ValueError(
                f"reranked list of user {user!r} holds items that were not its candidates: "
                f"{sorted(map(str, extra))[:5]}"
            )
    metrics = ("ndcg", "recall", "hit")
    before = topk_metrics(first_stage, relevant, ks, metrics)
    after = topk_metrics(reranked, relevant, ks, metrics)
    out: dict = {
        "users": before["users_evaluated"],
        "users_without_relevant": before["users_without_relevant"],
    }
    for name, res in (("before", before), ("after", after)):
        for key, value in res.items():
            if "@" in key:
                out[f"{name}/{key}"] = value
    # is the change more than which users happened to be reranked? each user's nDCG@k after minus
    # before, with a paired bootstrap interval over the users (exp3rt.metrics.paired_gain)
    for k in sorted({int(k) for k in ks}):
        was, now = per_user(first_stage, relevant, "ndcg", k), per_user(reranked, relevant, "ndcg", k)
        if len(was) < 2:
            continue
        g = paired_gain([now[u] for u in was], [was[u] for u in was])
        out[f"gain/ndcg@{k}"] = g["gain"]
        for key in ("ci_low", "ci_high", "share_better"):
            out[f"gain/ndcg@{k}_{key}"] = g[key]
    if seconds_per_user is not None:
        if isinstance(seconds_per_user, Mapping):
            vals = [float(v) for v in seconds_per_user.values()]
            out["time_per_user_s"] = sum(vals) / len(vals) if vals else float("nan")
        else:
            out["time_per_user_s"] = float(seconds_per_user)
    return out
