"""The student on vLLM (``eval.backend=vllm``): the same generations and rating readouts as the HF path.

Nothing here imports ``vllm`` until an engine is built, so the package imports without it; install it
with ``pip install -e ".[vllm]"`` on a machine with a CUDA GPU.

**Engine.** :func:`load_vllm_student` builds one ``vllm.LLM`` per process (predictions and reranking
share it: a second engine would not fit beside the first). A peft adapter folder is served as the base
model (``student.model_path`` of the training run, as :func:`exp3rt.inference.predict.load_student`
does) plus a ``LoRARequest`` on every call, with ``enable_lora=True`` and ``max_lora_rank`` = the
adapter's ``r`` rounded up to a rank vLLM supports; a merged or fully fine-tuned folder
(``exp3rt-merge``) is served as the model itself. Prompts go in as token ids (the HF tokenizer of the
adapter folder, no special tokens added), so both backends see the same tokens.
``enable_prefix_caching`` lets reranking's shared per-user prefix be computed once.

**Reasoning.** ``SamplingParams(max_tokens, temperature=0 | eval.temperature, stop=[answer prefix],
stop_token_ids=<the model's EOS ids>)``; the kept tokens are cut exactly as
:func:`exp3rt.inference.generate.generate_batch` cuts them (before EOS, wholly before the stop string),
so greedy reasoning is token for token the HF one. Sampled reasoning uses vLLM's own generator
(``seed`` + row): reproducible, but not the HF draws.

**Readout** (:meth:`VllmStudent.read`) on ``prompt + reasoning + separator + answer prefix`` as tokens:

1. one step with ``allowed_token_ids`` = the first tokens of the valid rating strings and ``logprobs``
   = their count, so every rating's first token is returned;
2. when a rating has more tokens (``"10"`` = ``"1"``, ``"0"`` on a 1–10 scale) the next tokens'
   log-probabilities under the full vocabulary, for every inner node of the ratings' token trie.

Which values vLLM returns depends on its version: V1 engines report *raw* log-probabilities (before
``allowed_token_ids``; the top ``logprobs`` of the whole vocabulary, which may leave out a rating
token), V0 engines the *processed* ones (renormalised over the allowed tokens). Both are handled: the
first answer shows which it is (a token outside the allowed set, or allowed tokens whose probabilities
sum below 1, can only be raw). Raw: a rating token left out of the top-k is read with its own
one-token request (``allowed_token_ids=[t]``, the prompt already in the prefix cache), and inner nodes
are one more step each (``prompt + "1"``, allowed = its children). Otherwise inner nodes are scored
with ``prompt_logprobs`` on the full candidate strings (``prompt + "1" + "0"``), which are raw in every
version. Root values that are renormalised differ from the raw ones by one factor per row, which
cancels when the ratings are renormalised, so the probabilities, ``most_likely`` and ``expected`` are
the HF ones either way; ``mass`` (the probability on valid ratings before renormalising) is exact when
the raw root is known and ``nan`` otherwise (processed logprobs on a scale whose ratings are all one
token). The semantics are those of :mod:`exp3rt.inference.readout` for predictions and reranking alike
(a rating that is a prefix of another must stop: ``p(1) = P("1")·(1 − P("0" | "1"))``), so each caller
gets the numbers its HF path gives.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from exp3rt.config import ConfigError
from exp3rt.inference.generate import GenOutput, _kept_prefix
from exp3rt.inference.readout import RatingReadout, _summarise, _tokens, _Trie
from exp3rt.inference.rerank import MODES, Scores, _encode, common_prefix_len
from exp3rt.student.model import ensure_model_folder
from exp3rt.student.ratings import RATING_PREFIX, RatingTokens

log = logging.getLogger(__name__)

#: LoRA ranks vLLM is built for (its LoRAConfig rejects others); an adapter's ``r`` is rounded up to one
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
INSTALL_HINT = 'pip install -e ".[vllm]" on a machine with a CUDA GPU (vLLM needs one)'

# A processed (renormalised) answer sums to 1 up to float32 rounding; raw values of the allowed tokens
# summing below this are certainly raw.
_PROCESSED_SUM_TOL = 1e-4


def adapter_rank(adapter_dir: str | Path) -> int:
    """The largest LoRA rank in a peft ``adapter_config.json`` (``r`` and any ``rank_pattern`` entry)."""
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    ranks = [int(cfg.get("r") or 0), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())]
    return max(ranks)


def vllm_lora_rank(r: int) -> int:
    """The smallest rank vLLM supports that holds an adapter of rank ``r``."""
    for k in LORA_RANKS:
        if k >= r:
            return k
    raise ValueError(
        f"LoRA rank {r} is above the largest rank vLLM serves ({LORA_RANKS[-1]}); merge the adapter "
        "(exp3rt-merge) and evaluate the merged folder"
    )


def engine_kwargs(tcfg, adapter_dir: str | Path, ev, max_logprobs: int = 20) -> tuple[dict, str | None]:
    """``vllm.LLM(**kwargs)`` for a trained student, and the LoRA adapter path (``None`` for a full model)."""
    adapter_dir = Path(adapter_dir)
    kw: dict = {
        "tokenizer": str(adapter_dir),
        "dtype": str(tcfg.student.dtype),
        "seed": int(ev.seed),
        "gpu_memory_utilization": float(ev.vllm_gpu_memory_utilization),
        "tensor_parallel_size": int(ev.vllm_tensor_parallel_size),
        "enable_prefix_caching": bool(ev.vllm_enable_prefix_caching),
        "enforce_eager": bool(ev.vllm_enforce_eager),
        "max_logprobs": int(max_logprobs),
    }
    if ev.vllm_max_model_len is not None:
        kw["max_model_len"] = int(ev.vllm_max_model_len)
    if not (adapter_dir / "adapter_config.json").is_file():
        kw["model"] = str(adapter_dir)
        return kw, None

    r = adapter_rank(adapter_dir)
    if ev.vllm_max_lora_rank is not None:
        rank = int(ev.vllm_max_lora_rank)
        if rank < r:
            raise ConfigError(
                f"config key 'eval.vllm_max_lora_rank' is {rank} but the adapter in {adapter_dir} has "
                f"rank {r}"
            )
    else:
        rank = vllm_lora_rank(r)
    kw.update(model=str(ensure_model_folder(tcfg.student)), enable_lora=True, max_lora_rank=rank, max_loras=1)
    return kw, str(adapter_dir)


_ENGINES: dict[tuple, VllmStudent] = {}


def load_vllm_student(tcfg, adapter_dir: str | Path, ev, ratings: RatingTokens | None = None) -> VllmStudent:
    """The trained student on a vLLM engine, built once per process and reused (predictions, reranking)."""
    n = len(ratings.texts) if ratings is not None else 0
    kw, lora = engine_kwargs(tcfg, adapter_dir, ev, max_logprobs=max(20, n + 1))
    key = (json.dumps(kw, sort_keys=True), lora)
    if key not in _ENGINES:
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError(f"eval.backend=vllm needs the vllm package: {INSTALL_HINT}") from e
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(adapter_dir))
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        log.info("vLLM engine: %s%s", kw, f" + LoRA {lora}" if lora else "")
        _ENGINES.clear()  # one engine per process
        _ENGINES[key] = VllmStudent(LLM(**kw), tok, lora_path=lora, model_path=kw["model"])
    return _ENGINES[key]


def release_engines() -> None:
    """Forget the cached engines (tests; a long-lived process that evaluates another student)."""
    _ENGINES.clear()


def _trie_children(seqs: Sequence[Sequence[int]]) -> dict[tuple[int, ...], list[int]]:
    """Every proper prefix of ``seqs`` (``()`` is the root) → the tokens that follow it."""
    out: dict[tuple[int, ...], set[int]] = {}
    for s in seqs:
        for k in range(len(s)):
            out.setdefault(tuple(s[:k]), set()).add(int(s[k]))
    return {node: sorted(toks) for node, toks in out.items()}


def _cover_paths(children: Mapping[tuple, list[int]]) -> list[tuple[int, ...]]:
    """The fewest token paths whose prompt log-probabilities hold every edge below the root."""
    edges = {node + (t,) for node, toks in children.items() if node for t in toks}
    return sorted(p for p in edges if not any(q != p and q[: len(p)] == p for q in edges))


class VllmStudent:
    """A vLLM engine and the HF tokenizer of the trained student, with the HF path's inference API."""

    def __init__(self, llm, tokenizer, lora_path: str | None = None, model_path: str | None = None):
        self.llm = llm
        self.tokenizer = tokenizer
        self.lora_request = None
        if lora_path:
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest(
                lora_name="exp3rt-student", lora_int_id=1, lora_path=str(lora_path)
            )
        self.eos_ids = self._eos_ids(model_path)

    def _eos_ids(self, model_path: str | None) -> set[int]:
        """The EOS ids the HF path stops at: the model's generation config and the tokenizer's."""
        ids: set[int] = set()
        if model_path and (Path(model_path) / "generation_config.json").is_file():
            from transformers import GenerationConfig

            eos = GenerationConfig.from_pretrained(model_path).eos_token_id
            if eos is not None:
                ids.update([eos] if isinstance(eos, int) else list(eos))
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return ids

    # ------------------------------------------------------------------------------------- engine calls

    def _run(self, prompts: Sequence[Sequence[int]], params) -> list:
        if not prompts:
            return []
        return self.llm.generate(
            [{"prompt_token_ids": list(p)} for p in prompts],
            params,
            use_tqdm=False,
            lora_request=self.lora_request,
        )

    def _step(
        self, prompts: Sequence[Sequence[int]], allowed: Sequence[Sequence[int]]
    ) -> tuple[list[dict[int, float]], bool]:
        """One greedy step per prompt restricted to ``allowed[i]`` with ``logprobs=len(allowed[i])``: the
        returned log-probabilities of the allowed tokens, and whether the answers prove them raw."""
        from vllm import SamplingParams

        params = [
            SamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=list(a), logprobs=len(a))
            for a in allowed
        ]
        values, raw = [], False
        for out, a in zip(self._run(prompts, params), allowed, strict=True):
            got = out.outputs[0].logprobs[0]
            vals = {t: float(got[t].logprob) for t in a if t in got}
            if (
                any(t not in set(a) for t in got)
                or sum(math.exp(v) for v in vals.values()) < 1 - _PROCESSED_SUM_TOL
            ):
                raw = True
            values.append(vals)
        return values, raw

    def _fill_raw(
        self,
        prompts: Sequence[Sequence[int]],
        allowed: Sequence[Sequence[int]],
        values: list[dict[int, float]],
    ) -> None:
        """Raw logprobs only: read each allowed token left out of the top-k with a one-token request (its
        raw log-probability comes back as the sampled token's; the prompt is in the prefix cache)."""
        from vllm import SamplingParams

        todo = [(i, t) for i, a in enumerate(allowed) for t in a if t not in values[i]]
        params = [
            SamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=[t], logprobs=1) for _, t in todo
        ]
        for (i, t), out in zip(todo, self._run([prompts[i] for i, _ in todo], params), strict=True):
            values[i][t] = float(out.outputs[0].logprobs[0][t].logprob)

    def edge_logprobs(
        self, contexts: Sequence[Sequence[int]], seqs: Sequence[Sequence[int]]
    ) -> tuple[list[dict[tuple, dict[int, float]]], list[float | None]]:
        """For each context, ``{node: {token: log P(token | context + node)}}`` for every node of the trie of
        ``seqs`` that has children, and the log-factor that turns the root's values into the model's own
        (0 when vLLM returned them raw; ``None`` when it renormalised them and nothing else told)."""
        children = _trie_children(seqs)
        root = children[()]
        n = len(contexts)
        root_vals, raw = self._step(contexts, [root] * n)
        missing = [(i, t) for i in range(n) for t in root if t not in root_vals[i]]
        if missing and not raw:
            raise RuntimeError(
                f"vLLM returned no log-probability for rating token(s) {sorted({t for _, t in missing})} "
                f"with allowed_token_ids={root} and logprobs={len(root)}"
            )
        if missing:
            self._fill_raw(contexts, [root] * n, root_vals)
        edges: list[dict[tuple, dict[int, float]]] = [{(): v} for v in root_vals]
        scale: list[float | None] = [0.0 if raw else None] * n
        inner = [node for node in children if node]
        if not inner:
            return edges, scale
        if raw:  # cheap: one more step per inner node, its prompt already cached
            prompts = [list(ctx) + list(node) for ctx in contexts for node in inner]
            allowed = [children[node] for _ in contexts for node in inner]
            vals, _ = self._step(prompts, allowed)
            self._fill_raw(prompts, allowed, vals)
            for k, v in enumerate(vals):
                i, j = divmod(k, len(inner))
                edges[i][inner[j]] = v
            return edges, scale
        # renormalised root values: read what follows from the prompt log-probabilities (always raw)
        from vllm import SamplingParams

        paths = _cover_paths(children)
        prompts = [list(ctx) + list(p) for ctx in contexts for p in paths]
        outs = self._run(prompts, SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1))
        for k, out in enumerate(outs):
            i, j = divmod(k, len(paths))
            path = paths[j]
            start = len(contexts[i])
            for d, t in enumerate(path):
                lp = float(out.prompt_logprobs[start + d][t].logprob)
                if d == 0:
                    scale[i] = lp - root_vals[i][t]
                else:
                    edges[i].setdefault(path[:d], {})[t] = lp
        return edges, scale

    # ------------------------------------------------------------------------------------- readout

    def read(
        self, contexts: Sequence[Sequence[int]], ratings: RatingTokens, prefix: str = RATING_PREFIX
    ) -> list[RatingReadout]:
        """:mod:`exp3rt.inference.readout`'s readout after each context (token ids ending with the prefix)."""
        if not contexts:
            return []
        seqs = ratings.token_ids(self.tokenizer, prefix)
        edges, scale = self.edge_logprobs(contexts, seqs)
        vocab = sorted({t for s in seqs for t in s})
        col = {t: j for j, t in enumerate(vocab)}
        trie = _Trie([[col[t] for t in s] for s in seqs])
        logprobs = {}
        for node in [(), *trie.inner]:
            real = tuple(vocab[j] for j in node)
            m = torch.full((len(contexts), len(vocab)), -math.inf, dtype=torch.float64)
            for i, e in enumerate(edges):
                for t, v in e[real].items():
                    m[i, col[t]] = v
            logprobs[node] = m
        reads = _summarise(ratings, trie.scores(logprobs))
        return [
            replace(r, mass=r.mass * math.exp(s) if s is not None else math.nan)
            for r, s in zip(reads, scale, strict=True)
        ]

    def readout_only(
        self, prompts: Sequence[str], ratings: RatingTokens, prefix: str = RATING_PREFIX
    ) -> list[RatingReadout]:
        """The fast mode: the readout right after ``prompt + prefix`` (no reasoning)."""
        prefix_ids = _tokens(self.tokenizer, prefix)
        return self.read([_tokens(self.tokenizer, p) + prefix_ids for p in prompts], ratings, prefix)

    # ------------------------------------------------------------------------------------- generation

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        do_sample: bool = False,
        temperature: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
    ) -> list[GenOutput]:
        """:func:`exp3rt.inference.generate.generate_batch`'s outputs (without a cache state)."""
        from vllm import SamplingParams

        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1 (got {max_new_tokens})")
        rows = [_tokens(self.tokenizer, p) for p in prompts]
        if any(not r for r in rows):
            raise ValueError("generate got an empty prompt: there is nothing to condition on")
        common = {
            "max_tokens": int(max_new_tokens),
            "stop": list(stop) or None,
            "stop_token_ids": sorted(self.eos_ids),
            "include_stop_str_in_output": False,
            "skip_special_tokens": True,
        }
        if do_sample:
            params = [
                SamplingParams(
                    **common, temperature=float(temperature), seed=None if seed is None else int(seed) + i
                )
                for i in range(len(rows))
            ]
        else:
            params = SamplingParams(**common, temperature=0.0)
        return [
            self._gen_output(r, out.outputs[0].token_ids, stop)
            for r, out in zip(rows, self._run(rows, params), strict=True)
        ]

    def _gen_output(self, prompt_ids: list[int], token_ids: Sequence[int], stop: Sequence[str]) -> GenOutput:
        """Cut vLLM's tokens as the HF loop does: before the first EOS, then wholly before the first stop
        string."""
        ids = [int(t) for t in token_ids]
        reason = "length"
        cut = next((k for k, t in enumerate(ids) if t in self.eos_ids), None)
        if cut is not None:
            ids, reason = ids[:cut], "eos"
        text = self.tokenizer.decode(ids)
        hits = [s for s in stop if s in text]
        if hits:
            ids, reason = ids[: _kept_prefix(self.tokenizer, ids, min(hits, key=text.find))], "stop"
        return GenOutput(self.tokenizer.decode(ids, skip_special_tokens=True), ids, prompt_ids, reason)

    def generate_and_read(
        self,
        prompts: Sequence[str],
        ratings: RatingTokens,
        max_new_tokens: int,
        prefix: str = RATING_PREFIX,
        separator: str = "\n",
        do_sample: bool = False,
        temperature: float = 1.0,
        seed: int | None = None,
    ) -> list[tuple[GenOutput, RatingReadout]]:
        """Reasoning (stopping where the student writes the prefix itself), then the readout after
        ``prompt + reasoning + separator + prefix`` — :func:`exp3rt.inference.readout.generate_and_read`."""
        stop = (prefix.rstrip(),) if prefix.strip() else ()
        gens = self.generate(prompts, max_new_tokens, do_sample, temperature, seed, stop)
        sep_ids, prefix_ids = _tokens(self.tokenizer, separator), _tokens(self.tokenizer, prefix)
        contexts = [
            g.prompt_ids
            + g.new_token_ids
            + (sep_ids if g.new_token_ids and separator and not g.text.endswith(separator) else [])
            + prefix_ids
            for g in gens
        ]
        return list(zip(gens, self.read(contexts, ratings, prefix), strict=True))

    # ------------------------------------------------------------------------------------- reranking

    def score_candidates(
        self,
        prompts_by_user: Mapping[Hashable, Sequence[tuple[Hashable, str]]],
        ratings: RatingTokens,
        rating_prefix: str = RATING_PREFIX,
        mode: str = "fast",
        max_new_tokens: int = 256,
        stats: dict | None = None,
    ) -> Scores:
        """:func:`exp3rt.inference.rerank.score_candidates` on vLLM:
        ``{user: [(item, expected, probs), ...]}``.

        Every user's candidates go to the engine in one call; the prefix cache computes a user's shared
        prompt prefix once. ``stats`` gets per user ``seconds`` (the call's time shared equally),
        ``prefix_tokens`` (the token prefix the user's contexts share; vLLM reuses it in whole blocks),
        ``suffix_tokens`` and, in full mode, ``reasoning``."""
        if mode not in MODES:
            raise ValueError(f"rerank mode must be one of {MODES} (got {mode!r})")
        values = [ratings.from_text(t) for t in ratings.texts]
        out: Scores = {}
        rows: list[tuple[Hashable, Hashable, str]] = []
        for user, cands in prompts_by_user.items():
            cands = list(cands)
            items = [c[0] for c in cands]
            if len(set(items)) != len(items):
                raise ValueError(f"user {user!r} has duplicate candidate items")
            out[user] = []
            rows += [(user, item, prompt) for item, prompt in cands]
        if not rows:
            return out
        t0 = time.perf_counter()
        prompts = [p for _, _, p in rows]
        if any(not _encode(self.tokenizer, p) for p in prompts):
            raise ValueError("an empty prompt cannot be scored")
        if mode == "full":  # the predictions' full mode: reasoning, then the readout on its tokens
            pairs = self.generate_and_read(prompts, ratings, max_new_tokens, rating_prefix)
            reasons = [g.text for g, _ in pairs]
            finish = [g.stop_reason for g, _ in pairs]
            contexts = [g.prompt_ids + g.new_token_ids for g, _ in pairs]
            reads = [r for _, r in pairs]
        else:
            contexts = [_encode(self.tokenizer, p + rating_prefix) for p in prompts]
            reads = self.read(contexts, ratings, rating_prefix)
        for (user, item, _), r in zip(rows, reads, strict=True):
            pr = list(r.probs)
            out[user].append((item, float(sum(p * v for p, v in zip(pr, values, strict=True))), pr))
        seconds = (time.perf_counter() - t0) / max(1, sum(1 for u in out if out[u]))
        if stats is not None:
            for user in out:
                idx = [k for k, r in enumerate(rows) if r[0] == user]
                if not idx:
                    continue
                seqs = [contexts[k] for k in idx]
                plen = common_prefix_len(seqs)
                info = {
                    "seconds": seconds,
                    "prefix_tokens": plen,
                    "suffix_tokens": sum(len(s) - plen for s in seqs),
                }
                if mode == "full":
                    info["reasoning"] = {rows[k][1]: reasons[k] for k in idx}
                    info["finish"] = {rows[k][1]: finish[k] for k in idx}
                stats[user] = info
        return out
