"""Batched generation with a KV cache, keeping what the rating readout needs to continue.

:func:`generate_batch` left-pads each batch, runs one forward over the prompts and then one token per
step with ``use_cache=True`` (greedy, or sampling from a seeded ``torch.Generator``), and stops a row at
EOS, at a stop string (e.g. the answer prefix the student writes itself), or at ``max_new_tokens``.
Positions are ``cumsum(attention_mask) - 1``, so a left-padded row sees the same positions as the row
alone and batched greedy output equals one-by-one output.

With ``keep_state=True`` each :class:`GenOutput` holds a :class:`GenState` (shared by its batch): the
KV cache of every token fed so far, the prompt mask, and how many generated tokens are in the cache.
:mod:`exp3rt.inference.readout` continues from it without re-encoding prompt + reasoning. A state holds
a batch's whole cache; drop the outputs (or use ``generate_and_read``) to free it. The cache itself (in-place
layers, or transformers' plain ``DynamicCache`` as fallback) comes from :mod:`exp3rt.inference.kv_cache`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from exp3rt.inference.kv_cache import _plain_layers, new_cache  # benchmarks patch generate.new_cache
from exp3rt.student.model import forward_accepts  # noqa: F401  (rerank and tests import it from here)


@dataclass
class GenState:
    """The KV cache of one generated batch and the bookkeeping to extend it row by row.

    Column ``j`` of the cache after the prompt block holds generated token ``j`` of every row (rows are
    fed in lockstep; a finished row is fed padding). ``fed`` generated tokens are in the cache."""

    cache: Any
    prompt_mask: torch.Tensor  # (B, P) 1 on prompt tokens, 0 on left padding
    fed: int
    pad_id: int

    @property
    def length(self) -> int:
        return int(self.prompt_mask.shape[1]) + self.fed


@dataclass
class GenOutput:
    text: str  # the kept generated text (EOS and a stop string excluded), special tokens skipped
    new_token_ids: list[int]  # the kept generated tokens (before EOS / the stop string)
    prompt_ids: list[int]
    stop_reason: str  # "eos" | "stop" (a stop string) | "length" (max_new_tokens)
    state: GenState | None = field(default=None, repr=False)
    row: int = 0  # this output's row in ``state``
    written: str | None = None  # the student's own text where a rewrite (generate_and_read) changed it
    # after a rewrite: how many of the (new) ``new_token_ids`` still match the cached tokens
    cache_valid: int | None = None

    @property
    def in_cache(self) -> int:
        """How many of :attr:`new_token_ids` are in the state's cache (the rest must be fed first)."""
        if self.state is None:
            return 0
        n = min(len(self.new_token_ids), self.state.fed)
        return n if self.cache_valid is None else min(n, self.cache_valid)


def eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        tokenizer.eos_token_id,
    ):
        if source is None:
            continue
        ids.update([source] if isinstance(source, int) else list(source))
    return ids


def crop_cache(cache, length: int) -> None:
    """Drop cached tokens beyond ``length`` (``crop(-n)`` means "remove n" in transformers 4.x and 5.x)."""
    extra = int(cache.get_seq_length()) - int(length)
    if extra > 0:
        cache.crop(-extra)


def _cache_kwarg(model) -> str:
    """``cache`` where the model's forward takes it (transformers >= 5.2x deprecates ``past_key_values``)."""
    return "cache" if forward_accepts(model, "cache") else "past_key_values"


def forward_step(
    model,
    cache,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    last_only: bool = False,
) -> torch.Tensor:
    """One cached forward: ``mask`` covers cache + new tokens; returns logits (B, L, V) in float32.

    ``last_only``: only the last position is projected onto the vocabulary (``logits_to_keep=1``, where
    the model takes it; (B, 1, V) then). A prompt pass otherwise materialises B x L x V float32 logits:
    1.2 GB for 16 SmolLM2 prompts of 400 tokens, 10 GB for Llama-3's 128k vocabulary at 1,200 tokens."""
    device = next(model.parameters()).device
    extra = {"logits_to_keep": 1} if last_only and forward_accepts(model, "logits_to_keep") else {}
    out = model(
        input_ids=input_ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        use_cache=True,
        **{_cache_kwarg(model): cache},
        **extra,
    )
    return out.logits.float()


def _kept_prefix(tokenizer, ids: list[int], stop: str) -> int:
    """How many of ``ids`` lie wholly before the first occurrence of ``stop`` in their decoded text."""
    full = tokenizer.decode(ids)
    cut = full.find(stop)
    k = len(ids)
    while k > 0 and len(tokenizer.decode(ids[:k])) > cut:
        k -= 1
    return k


def _choose(logits: torch.Tensor, do_sample: bool, temperature: float, generator) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits / max(float(temperature), 1e-6), dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


PREFILL_SLACK = 0.25  # a prompt group may hold up to 25% padding; more starts a new group


def length_groups(lengths: Sequence[int], slack: float | None = None) -> list[list[int]]:
    """Row indices grouped by length (shortest first) so that a group's left padding stays within
    ``slack`` (default :data:`PREFILL_SLACK`) times its real tokens; ``slack=inf`` gives one group."""
    slack = PREFILL_SLACK if slack is None else float(slack)
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i in sorted(range(len(lengths)), key=lambda k: lengths[k]):
        n = int(lengths[i])  # the longest so far: the group's width if i joins
        if current and (len(current) + 1) * n > (1.0 + slack) * (total + n):
            groups.append(current)
            current, total = [], 0
        current.append(i)
        total += n
    if current:
        groups.append(current)
    return groups


def _prefill(model, rows: list[list[int]], pad_id: int, width: int, reserve: int = 0):
    """The prompt pass of one batch: (KV cache of the left-padded batch, last-position logits (B, V)).

    The rows run in length groups (:func:`length_groups`), each left-padded only to its own longest row,
    and their keys and values are placed right-aligned into one cache of the batch's width (the columns
    left of a row are masked by the prompt mask). Identical to one forward over the whole left-padded
    batch, without computing its padding: prompts of 74-299 tokens padded to 299 cost 4,784 positions
    for 2,931 tokens."""
    groups = length_groups([len(r) for r in rows])

    def run(members: list[int], w: int, room: int = 0):
        ids = torch.tensor([[pad_id] * (w - len(rows[i])) + rows[i] for i in members], dtype=torch.long)
        mask = torch.tensor(
            [[0] * (w - len(rows[i])) + [1] * len(rows[i]) for i in members], dtype=torch.long
        )
        cache = new_cache(model, room)
        logits = forward_step(model, cache, ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), last_only=True)[
            :, -1
        ]
        return cache, logits

    if len(groups) == 1:
        return run(list(range(len(rows))), width, reserve)
    parts = [(members, *run(members, max(len(rows[i]) for i in members))) for members in groups]
    if not all(_plain_layers(cache) for _, cache, _ in parts):
        return run(list(range(len(rows))), width, reserve)
    b = len(rows)
    logits = parts[0][2].new_empty((b, parts[0][2].shape[-1]))
    merged = new_cache(model, reserve)
    for layer in range(len(parts[0][1].layers)):
        ref = parts[0][1].layers[layer]
        keys = ref.keys.new_zeros((b, ref.keys.shape[1], width, ref.keys.shape[3]))
        values = ref.values.new_zeros((b, ref.values.shape[1], width, ref.values.shape[3]))
        for members, cache, _ in parts:
            index = torch.tensor(members, device=keys.device)
            w = cache.layers[layer].keys.shape[2]
            keys[index, :, width - w :] = cache.layers[layer].keys
            values[index, :, width - w :] = cache.layers[layer].values
        merged.update(keys, values, layer)
    for members, _, part_logits in parts:
        logits[torch.tensor(members, device=logits.device)] = part_logits
    return merged, logits


@torch.no_grad()
def _generate_one_batch(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    generator,
    stop: Sequence[str],
    eos: set[int],
    keep_state: bool,
) -> list[GenOutput]:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    rows = [list(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    width = max(len(r) for r in rows)
    if min(len(r) for r in rows) == 0:
        raise ValueError("generate_batch got an empty prompt: there is nothing to condition on")
    prompt_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    # room for the reasoning and the readout's appended prefix (a few tokens; the cache grows if needed)
    cache, logits = _prefill(model, rows, pad_id, width, reserve=width + max_new_tokens + 16)
    next_pos = prompt_mask.sum(-1)
    mask = prompt_mask
    b = len(rows)
    gen: list[list[int]] = [[] for _ in range(b)]
    kept = [0] * b
    reason = ["length"] * b
    active = [True] * b
    window = max((len(s) for s in stop), default=0) + 1
    fed = 0
    for step in range(max_new_tokens):
        tokens = _choose(logits, do_sample, temperature, generator).tolist()
        feed_mask = []
        for i, t in enumerate(tokens):
            feed_mask.append(int(active[i]))
            if not active[i]:
                tokens[i] = pad_id
                continue
            if t in eos:
                active[i], reason[i], kept[i] = False, "eos", len(gen[i])
                continue
            gen[i].append(t)
            kept[i] = len(gen[i])
            if stop and any(s in tokenizer.decode(gen[i][-window:]) for s in stop):
                first = min(
                    (s for s in stop if s in tokenizer.decode(gen[i])),
                    key=lambda s: tokenizer.decode(gen[i]).find(s),
                )
                active[i], reason[i], kept[i] = False, "stop", _kept_prefix(tokenizer, gen[i], first)
        if not any(active) or step == max_new_tokens - 1:
            break
        # feed this step's tokens (a finished row is fed padding, masked out)
        mask = torch.cat([mask, torch.tensor(feed_mask, dtype=torch.long)[:, None]], dim=1)
        logits = forward_step(model, cache, torch.tensor(tokens)[:, None], mask, next_pos[:, None])[:, -1]
        next_pos = next_pos + 1
        fed += 1
    state = GenState(cache, prompt_mask, fed, pad_id) if keep_state else None
    out = []
    for i in range(b):
        new = gen[i][: kept[i]]
        out.append(
            GenOutput(tokenizer.decode(new, skip_special_tokens=True), new, rows[i], reason[i], state, i)
        )
    return out


def length_order(tokenizer, prompts: Sequence[str]) -> list[int]:
    """Prompt indices by token length (stable): batches cut from this order hold prompts of similar
    length, so little of a batch is left padding (in the prompt pass and in every decoding step's
    attention)."""
    lengths = (
        [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
        if prompts
        else []
    )
    return sorted(range(len(prompts)), key=lambda i: lengths[i])


def generate_batch(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int | None = None,
    batch_size: int = 16,
    stop: Sequence[str] = (),
    keep_state: bool = False,
) -> list[GenOutput]:
    """Generate a continuation of each prompt (prompts are complete texts, e.g. from
    :func:`exp3rt.student.tokenize.render`; they are tokenised without adding special tokens).

    Greedy by default; ``do_sample=True`` samples at ``temperature`` from a generator seeded with
    ``seed`` (``None``: unseeded) — one generator per call, so the draws depend on the batch order.
    ``stop``: strings that end a row (the kept text is what precedes the first stop string).
    ``keep_state``: keep each batch's KV cache on the outputs for :func:`exp3rt.inference.readout.read_after`.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1 (got {max_new_tokens})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    eos = eos_ids(model, tokenizer)
    if not eos:
        raise ValueError(
            "neither the model's generation_config nor the tokenizer names an EOS token: generation "
            "could not stop"
        )
    generator = None
    if do_sample:
        generator = torch.Generator()
        if seed is not None:
            generator.manual_seed(int(seed))
        else:
            generator.seed()
    was_training = model.training
    model.eval()
    try:
        out: list[GenOutput] = []
        for start in range(0, len(prompts), batch_size):
            out += _generate_one_batch(
                model,
                tokenizer,
                prompts[start : start + batch_size],
                int(max_new_tokens),
                do_sample,
                temperature,
                generator,
                tuple(stop),
                eos,
                keep_state,
            )
        return out
    finally:
        if was_training:
            model.train()
