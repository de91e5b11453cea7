"""The rating readout: the next-token distribution over the valid rating tokens after the answer prefix.

After the reasoning (or, in the fast mode, right after the prompt) the template's answer prefix
(``StudentPrompts.rating_prefix``, "Predicted User Rating: ") is appended as its own tokens — the
tokens it has in training, where the answer is tokenised apart from the prompt — and the model's
distribution over the ratings' tokens (:meth:`RatingTokens.token_ids`, derived from the tokenizer) is
read there.

**Multi-token ratings.** The ratings' token sequences form a trie (``"1"`` and ``"10"`` share ``"1"``).
A rating's probability is the chain probability of its tokens; a rating whose tokens are a proper
prefix of another rating's also needs the model *not* to continue into the longer one::

    p(10) = P("1" | prefix) · P("0" | prefix "1")
    p(1)  = P("1" | prefix) · (1 − P("0" | prefix "1"))

so the mass of the first token is split exactly and nothing is counted twice. The scores are then
renormalised over the valid ratings (``mass`` is their sum before that: how much the model put on any
valid rating). One extra forward per inner trie node (one for 1–10), batched over the rows.

**KV cache.** :func:`read_after` continues from the generation's cache (:class:`GenState`): one forward
over just the appended tokens (the reasoning token not yet fed, the separator, the prefix), with an
attention mask that hides what a row generated after its kept reasoning (EOS, padding, a stop string)
and positions that continue each row's own count — the same numbers as a forward over
prompt + reasoning + prefix from scratch. The cache is cropped back afterwards, so the state can be read
again. :func:`readout_only` is the fast mode: prompt + prefix, no reasoning.

``expected`` is Σ p·r and ``most_likely`` the argmax, both on the dataset's scale (``from_text`` undoes
``sft.rating_offset``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from exp3rt.inference.generate import (
    GenOutput,
    GenState,
    crop_cache,
    forward_step,
    generate_batch,
    length_order,
)
from exp3rt.inference.kv_cache import new_cache
from exp3rt.student.ratings import RATING_PREFIX, RatingTokens


@dataclass(frozen=True)
class RatingReadout:
    ratings: tuple[float, ...]  # the dataset's scale (after undoing the offset), in RatingTokens order
    probs: tuple[float, ...]  # renormalised over the valid ratings (sum 1)
    most_likely: float
    expected: float
    mass: float  # the probability the model put on valid ratings before renormalising

    def as_dict(self) -> dict:
        return {
            "probs": dict(zip(self.ratings, self.probs, strict=True)),
            "most_likely": self.most_likely,
            "expected": self.expected,
            "mass": self.mass,
        }


class _Trie:
    """The ratings' token sequences: ``inner`` are the proper prefixes (length >= 1) that need a forward."""

    def __init__(self, seqs: list[list[int]]):
        self.seqs = [tuple(s) for s in seqs]
        inner = {s[:k] for s in self.seqs for k in range(1, len(s))}
        self.inner = sorted(inner, key=lambda p: (len(p), p))
        self.children = {
            p: sorted({s[len(p)] for s in self.seqs if len(s) > len(p) and s[: len(p)] == p})
            for p in [(), *self.inner]
        }

    def scores(self, logprobs: dict[tuple, torch.Tensor]) -> torch.Tensor:
        """(B, R) unnormalised probabilities from each node's next-token log-probabilities (B, V)."""
        cols = []
        for s in self.seqs:
            lp = sum(logprobs[s[:k]][:, s[k]] for k in range(len(s)))
            if s in self.children:  # a rating that is a prefix of a longer one: it must stop here
                cont = logprobs[s][:, self.children[s]].exp().sum(-1)
                lp = lp + torch.log1p(-cont.clamp(max=1 - 1e-12))
            cols.append(lp)
        return torch.stack(cols, dim=1).exp()


def _tokens(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _summarise(ratings: RatingTokens, scores: torch.Tensor) -> list[RatingReadout]:
    values = torch.tensor(ratings.ratings, dtype=torch.float64)
    scores = scores.double()
    mass = scores.sum(-1)
    probs = scores / mass.clamp(min=1e-300)[:, None]
    out = []
    for p, m in zip(probs, mass, strict=True):
        out.append(
            RatingReadout(
                tuple(ratings.ratings),
                tuple(float(x) for x in p),
                float(values[int(p.argmax())]),
                float((p * values).sum()),
                float(m),
            )
        )
    return out


@torch.no_grad()
def _score(
    model,
    cache,
    base_mask: torch.Tensor,
    next_pos: torch.Tensor,
    chunks: list[list[int]],
    pad_id: int,
    trie: _Trie,
) -> torch.Tensor:
    """Append each row's ``chunk`` to ``cache`` and score the ratings after it; the cache is cropped back
    to its length on entry. Chunks are left-padded (the padding masked out, positions continuing each
    row's own count), so every row's last token sits in the last column and only that column is
    projected onto the vocabulary."""
    start = int(cache.get_seq_length())
    if base_mask.shape[1] != start:
        raise ValueError(f"readout: mask covers {base_mask.shape[1]} cached tokens, the cache holds {start}")
    lens = torch.tensor([len(c) for c in chunks])
    if int(lens.min()) < 1:
        raise ValueError("readout: every row needs at least one appended token (the answer prefix is empty?)")
    width = int(lens.max())
    ids = torch.tensor([[pad_id] * (width - len(c)) + c for c in chunks], dtype=torch.long)
    chunk_mask = (torch.arange(width)[None, :] >= (width - lens)[:, None]).long()
    mask = torch.cat([base_mask, chunk_mask], dim=1)
    positions = next_pos[:, None] + (chunk_mask.cumsum(-1) - 1).clamp(min=0)
    try:
        logits = forward_step(model, cache, ids, mask, positions, last_only=True)[:, -1]
        logprobs = {(): torch.log_softmax(logits, dim=-1)}
        after = start + width
        for node in trie.inner:  # e.g. "1" for 1-10: P(next | prefix "1")
            crop_cache(cache, after)
            d = len(node)
            node_ids = torch.tensor([list(node)] * len(chunks), dtype=torch.long)
            node_mask = torch.cat([mask, torch.ones(len(chunks), d, dtype=torch.long)], dim=1)
            node_pos = (next_pos + lens)[:, None] + torch.arange(d)[None, :]
            logprobs[node] = torch.log_softmax(
                forward_step(model, cache, node_ids, node_mask, node_pos, last_only=True)[:, -1], dim=-1
            )
        return trie.scores(logprobs)
    finally:
        crop_cache(cache, start)


def _prepare(ratings: RatingTokens, tokenizer, prefix: str) -> tuple[_Trie, list[int]]:
    trie = _Trie(ratings.token_ids(tokenizer, prefix))
    return trie, _tokens(tokenizer, prefix)


def read_after(
    model,
    tokenizer,
    outputs: Sequence[GenOutput],
    ratings: RatingTokens,
    prefix: str = RATING_PREFIX,
    separator: str = "\n",
) -> list[RatingReadout]:
    """The readout after each output's kept reasoning, continuing from its batch's KV cache.

    Appended per row: the reasoning tokens not yet in the cache (at most the last one), ``separator``
    when the reasoning is not empty and does not already end with it (the answer template puts a newline
    between the rationale and the prefix), then ``prefix``.
    """
    trie, prefix_ids = _prepare(ratings, tokenizer, prefix)
    sep_ids = _tokens(tokenizer, separator)
    results: list[RatingReadout | None] = [None] * len(outputs)
    groups: dict[int, tuple[GenState, list[int]]] = {}
    for k, o in enumerate(outputs):
        if o.state is None:
            raise ValueError(
                "read_after needs the generation state: call generate_batch(..., keep_state=True)"
            )
        groups.setdefault(id(o.state), (o.state, []))[1].append(k)
    was_training = model.training
    model.eval()
    try:
        for state, members in groups.values():
            crop_cache(state.cache, state.length)
            if int(state.cache.get_seq_length()) != state.length:
                raise ValueError("read_after: the generation cache was changed since generate_batch")
            b = int(state.prompt_mask.shape[0])
            gen_mask = torch.zeros(b, state.fed, dtype=torch.long)
            chunks = [[state.pad_id] for _ in range(b)]  # rows of the batch not asked for: a masked-out dummy
            next_pos = torch.zeros(b, dtype=torch.long)
            row_mask = torch.zeros(b, dtype=torch.bool)
            for k in members:
                o = outputs[k]
                i, fed = o.row, o.in_cache
                gen_mask[i, :fed] = 1
                sep = sep_ids if o.new_token_ids and separator and not o.text.endswith(separator) else []
                chunks[i] = o.new_token_ids[fed:] + sep + prefix_ids
                next_pos[i] = int(state.prompt_mask[i].sum()) + fed
                row_mask[i] = True
            scores = _score(
                model,
                state.cache,
                torch.cat([state.prompt_mask, gen_mask], dim=1),
                next_pos,
                chunks,
                state.pad_id,
                trie,
            )
            for k, r in zip(
                members, _summarise(ratings, scores[[outputs[k].row for k in members]]), strict=True
            ):
                results[k] = r
    finally:
        if was_training:
            model.train()
    return results


@torch.no_grad()
def readout_only(
    model,
    tokenizer,
    prompts: Sequence[str],
    ratings: RatingTokens,
    prefix: str = RATING_PREFIX,
    batch_size: int = 16,
    sort_by_length: bool = True,
) -> list[RatingReadout]:
    """The fast mode: the readout right after ``prompt + prefix`` (no reasoning), batched (prompts of
    similar length together with ``sort_by_length``; results in the input order)."""
    trie, prefix_ids = _prepare(ratings, tokenizer, prefix)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = [_tokens(tokenizer, p) + prefix_ids for p in prompts]  # tokenized once: the order and the batches
    order = sorted(range(len(rows)), key=lambda i: len(rows[i])) if sort_by_length else list(range(len(rows)))
    was_training = model.training
    model.eval()
    out: list[RatingReadout | None] = [None] * len(prompts)
    try:
        for start in range(0, len(order), batch_size):
            members = order[start : start + batch_size]
            chunks = [rows[i] for i in members]
            b = len(chunks)
            scores = _score(
                model,
                new_cache(model),
                torch.zeros(b, 0, dtype=torch.long),
                torch.zeros(b, dtype=torch.long),
                chunks,
                pad_id,
                trie,
            )
            for i, r in zip(members, _summarise(ratings, scores), strict=True):
                out[i] = r
    finally:
        if was_training:
            model.train()
    return out


def apply_rewrite(tokenizer, outputs: Sequence[GenOutput], rewrite: Callable[[str], str]) -> int:
    """Rewrite each output's reasoning in place before :func:`read_after`: ``text`` and ``new_token_ids``
    become the rewritten ones, ``written`` keeps the student's text, and the cache rows keep only the
    tokens both texts share (read_after runs the changed tail). Returns how many changed."""
    changed = 0
    for g in outputs:
        fixed = rewrite(g.text)
        if fixed == g.text:
            continue
        ids = _tokens(tokenizer, fixed)
        shared = next(
            (n for n, (a, b) in enumerate(zip(g.new_token_ids, ids, strict=False)) if a != b),
            min(len(g.new_token_ids), len(ids)),
        )
        g.cache_valid = min(g.in_cache, shared)
        g.written, g.text, g.new_token_ids = g.text, fixed, ids
        changed += 1
    return changed


def generate_and_read(
    model,
    tokenizer,
    prompts: list[str],
    ratings: RatingTokens,
    max_new_tokens: int,
    prefix: str = RATING_PREFIX,
    separator: str = "\n",
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int | None = None,
    sort_by_length: bool = True,
    rewrite: Callable[[str], str] | None = None,
) -> list[tuple[GenOutput, RatingReadout]]:
    """Reasoning then readout, batch by batch (each batch's cache is freed before the next); results in
    the input order.

    Generation stops where the student writes the prefix itself (``prefix`` without its trailing space);
    the prefix is then appended as its training tokens and read. ``sort_by_length``: batches of prompts
    of similar length (:func:`length_order`); greedy output is the same either way, a seeded sample is
    reproducible either way (the seed advances per batch).

    ``rewrite`` (a tool between the reasoning and the readout, e.g. the scored rationale's estimate
    recomputed from the student's own lists): each reasoning it changes is read as ``prompt + rewritten
    reasoning + separator + prefix``, continuing the batch's cache over the tokens the two texts share
    (only the changed tail is run again); the output's ``text`` and ``new_token_ids`` become the
    rewritten ones and ``written`` keeps the student's own text."""
    stop = (prefix.rstrip(),) if prefix.strip() else ()
    order = length_order(tokenizer, prompts) if sort_by_length else list(range(len(prompts)))
    generator_seed = seed
    out: list[tuple[GenOutput, RatingReadout] | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        members = order[start : start + batch_size]
        gens = generate_batch(
            model,
            tokenizer,
            [prompts[i] for i in members],
            max_new_tokens,
            do_sample,
            temperature,
            generator_seed,
            batch_size,
            stop=stop,
            keep_state=True,
        )
        if rewrite is not None:
            apply_rewrite(tokenizer, gens, rewrite)
        reads = read_after(model, tokenizer, gens, ratings, prefix, separator)
        for i, g, r in zip(members, gens, reads, strict=True):
            g.state = None  # free the cache
            out[i] = (g, r)
        if generator_seed is not None:
            generator_seed += 1  # a different (still reproducible) stream per batch
    return out
