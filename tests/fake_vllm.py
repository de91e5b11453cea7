"""A test double for the part of vLLM's offline API that ``exp3rt.inference.vllm_backend`` calls.

vLLM needs a GPU; this stand-in runs a transformers model on CPU and computes real logits, so a test can
compare the vLLM path's numbers with the HF path's. It follows vLLM's signatures and output types:

* ``LLM(model, *, tokenizer=None, dtype="auto", seed=0, gpu_memory_utilization=0.9, tensor_parallel_size=1,
  max_model_len=None, enable_lora=False, max_lora_rank=16, max_loras=1, enable_prefix_caching=None,
  enforce_eager=False, max_logprobs=20, logprobs_mode="raw_logprobs")`` — an unknown keyword is a
  ``TypeError`` (vLLM's ``EngineArgs`` rejects it too);
* ``LLM.generate(prompts, sampling_params=None, *, use_tqdm=True, lora_request=None)`` →
  ``list[RequestOutput]`` in prompt order; a prompt is a string or ``{"prompt_token_ids": [...]}``;
  ``sampling_params`` one for all or one per prompt;
* ``SamplingParams`` — keyword fields with vLLM's defaults (``max_tokens=16``, ``temperature=1.0``, ...);
* ``LoRARequest(lora_name, lora_int_id, lora_path)``;
* ``RequestOutput.prompt_logprobs``: ``[None, {token: Logprob}, ...]`` (each position's own token plus the
  top ``prompt_logprobs``); ``CompletionOutput.logprobs``: one ``{token: Logprob}`` per generated token
  (the sampled token plus the top ``logprobs``); ``token_ids`` keep the EOS / stop token, ``text`` drops a
  stop string.

``logprobs_mode="raw_logprobs"`` is vLLM V1's default: log-softmax of the model's logits *before*
``allowed_token_ids``, so the top-k is over the whole vocabulary; ``"processed_logprobs"`` reports them
after the allowed-token mask (renormalised), as vLLM V0 did. Every call is recorded in ``LLM.calls``;
``LLM.prefix_hits`` counts prompt tokens an earlier prompt already covered when prefix caching is on
(vLLM's own cache does not serve requests that ask for prompt log-probabilities).
"""

from __future__ import annotations

import importlib.machinery
import itertools
import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SUPPORTED_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
LOGPROBS_MODES = ("raw_logprobs", "processed_logprobs")


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class SamplingParams:
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    allowed_token_ids: list[int] | None = None

    def __post_init__(self):
        if self.n != 1 or self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0:
            raise NotImplementedError("fake vllm: n > 1 and penalties are not modelled")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(self, name)
            if v is not None and v < -1:
                raise ValueError(f"{name} must be non-negative or -1, got {v}.")
        if self.allowed_token_ids is not None and not self.allowed_token_ids:
            raise ValueError("allowed_token_ids is not None and empty!")


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str = ""

    def __post_init__(self):
        assert self.lora_path, "lora_path cannot be empty"


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list[dict[int, Logprob] | None] | None
    outputs: list[CompletionOutput]
    finished: bool = True
    lora_request: LoRARequest | None = None


@dataclass
class Call:
    prompts: list[list[int]]
    params: list[SamplingParams]
    lora_request: LoRARequest | None
    use_tqdm: Any = True


class LLM:
    instances: list[LLM] = []

    def __init__(
        self,
        model: str,
        *,
        tokenizer: str | None = None,
        dtype: str = "auto",
        seed: int = 0,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        enable_lora: bool = False,
        max_lora_rank: int = 16,
        max_loras: int = 1,
        enable_prefix_caching: bool | None = None,
        enforce_eager: bool = False,
        max_logprobs: int = 20,
        logprobs_mode: str | None = None,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if enable_lora and max_lora_rank not in SUPPORTED_LORA_RANKS:
            raise ValueError(f"max_lora_rank ({max_lora_rank}) must be one of {SUPPORTED_LORA_RANKS}.")
        mode = logprobs_mode or DEFAULT_LOGPROBS_MODE
        if mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode {mode!r} is not modelled")
        self.kwargs = {
            "model": model,
            "tokenizer": tokenizer,
            "dtype": dtype,
            "seed": seed,
            "gpu_memory_utilization": gpu_memory_utilization,
            "tensor_parallel_size": tensor_parallel_size,
            "max_model_len": max_model_len,
            "enable_lora": enable_lora,
            "max_lora_rank": max_lora_rank,
            "max_loras": max_loras,
            "enable_prefix_caching": enable_prefix_caching,
            "enforce_eager": enforce_eager,
            "max_logprobs": max_logprobs,
            "logprobs_mode": mode,
        }
        self.logprobs_mode = mode
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        self.base_path = model
        self._loras: dict[int, Any] = {}
        self.calls: list[Call] = []
        self.prefix_hits = 0
        self._seen: list[list[int]] = []
        self._ids = itertools.count()
        eos = self.model.generation_config.eos_token_id
        self.eos = {eos} if isinstance(eos, int) else set(eos or ())
        if self.tokenizer.eos_token_id is not None:
            self.eos.add(self.tokenizer.eos_token_id)
        LLM.instances.append(self)

    def get_tokenizer(self):
        return self.tokenizer

    # ----------------------------------------------------------------------------------------------

    def _model_for(self, lora: LoRARequest | None):
        if lora is None:
            return self.model
        if not self.kwargs["enable_lora"]:
            raise ValueError(f"LoRA is not enabled! (got lora_request {lora.lora_name})")
        if lora.lora_int_id not in self._loras:
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            rank = json.loads((Path(lora.lora_path) / "adapter_config.json").read_text())["r"]
            if rank > self.kwargs["max_lora_rank"]:
                raise ValueError(
                    f"LoRA rank {rank} is greater than max_lora_rank {self.kwargs['max_lora_rank']}."
                )
            base = AutoModelForCausalLM.from_pretrained(self.base_path, dtype=torch.float32)
            self._loras[lora.lora_int_id] = PeftModel.from_pretrained(base, lora.lora_path).eval()
        return self._loras[lora.lora_int_id]

    def generate(
        self, prompts, sampling_params=None, *, use_tqdm=True, lora_request: LoRARequest | None = None
    ) -> list[RequestOutput]:
        if isinstance(prompts, str | dict):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            params = [SamplingParams()] * len(prompts)
        elif isinstance(sampling_params, list | tuple):
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError("The lengths of prompts and sampling_params must be the same.")
        else:
            params = [sampling_params] * len(prompts)
        if isinstance(lora_request, list):
            raise NotImplementedError("fake vllm: one lora_request for the whole call")
        ids = [
            list(p["prompt_token_ids"]) if isinstance(p, dict) else self.tokenizer.encode(p) for p in prompts
        ]
        self.calls.append(Call(ids, params, lora_request, use_tqdm))
        model = self._model_for(lora_request)
        return self._run_requests(prompts, ids, params, model, lora_request)

    def _check(self, ids: list[int], sp: SamplingParams) -> None:
        cap = self.kwargs["max_logprobs"]
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(sp, name)
            if v is not None and v > cap:
                raise ValueError(f"Requested {name} of {v}, which is greater than max allowed: {cap}")
        if not ids:
            raise ValueError("The decoder prompt cannot be empty")
        limit = self.kwargs["max_model_len"]
        if limit is not None and len(ids) > limit:
            raise ValueError(
                f"The decoder prompt (length {len(ids)}) is longer than the maximum model length of {limit}."
            )
        if sp.allowed_token_ids is not None and not all(
            0 <= t < len(self.tokenizer) for t in sp.allowed_token_ids
        ):
            raise ValueError("allowed_token_ids contains out-of-vocab token id!")

    def _count_prefix_hit(self, ids: list[int], sp: SamplingParams) -> None:
        if not self.kwargs["enable_prefix_caching"] or sp.prompt_logprobs is not None:
            return
        best = 0
        for seen in self._seen:
            k = 0
            while k < min(len(seen), len(ids) - 1) and seen[k] == ids[k]:
                k += 1
            best = max(best, k)
        self.prefix_hits += best
        self._seen.append(ids)

    @staticmethod
    def _top(lp: torch.Tensor, k: int, token: int) -> dict[int, Logprob]:
        """The token's log-probability plus the top ``k`` (``-1``: all), with ranks (1 = most likely)."""
        picks = [token]
        if k == -1:
            picks += [t for t in range(lp.numel()) if t != token]
        elif k > 0:
            picks += [int(t) for t in torch.topk(lp, k).indices if int(t) != token]
        return {t: Logprob(float(lp[t]), int((lp > lp[t]).sum()) + 1) for t in picks}

    @staticmethod
    @torch.no_grad()
    def _logits(model, seqs: list[list[int]], batch: int = 16) -> list[torch.Tensor]:
        """Each sequence's logits (L, V), float32: right-padded batches (padding after a row's tokens
        cannot reach them through the causal mask), no KV cache."""
        out = []
        for k in range(0, len(seqs), batch):
            rows = seqs[k : k + batch]
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            out += [logits[j, : len(r)] for j, r in enumerate(rows)]
        return out

    def _run_requests(
        self, prompts, ids: list[list[int]], params: list[SamplingParams], model, lora
    ) -> list[RequestOutput]:
        """All requests of one call in lockstep: one batched forward per generated token."""
        for i, sp in zip(ids, params, strict=True):
            self._check(i, sp)
            self._count_prefix_hit(i, sp)
        n = len(ids)
        seqs = [list(i) for i in ids]
        outs: list[list[int]] = [[] for _ in range(n)]
        sample_lps: list[list[dict[int, Logprob]]] = [[] for _ in range(n)]
        prompt_lps: list[list | None] = [None] * n
        cum, text = [0.0] * n, [""] * n
        finish: list[str | None] = [None] * n
        reason: list[int | str | None] = [None] * n
        gens = [
            torch.Generator().manual_seed(sp.seed if sp.seed is not None else self.kwargs["seed"])
            if sp.temperature >= 1e-5
            else None
            for sp in params
        ]
        active, first = list(range(n)), True
        while active:
            for r, logits in zip(active, self._logits(model, [seqs[r] for r in active]), strict=True):
                sp = params[r]
                if first and sp.prompt_logprobs is not None:
                    lp = torch.log_softmax(logits, dim=-1)
                    prompt_lps[r] = [None] + [
                        self._top(lp[j - 1], sp.prompt_logprobs, ids[r][j]) for j in range(1, len(ids[r]))
                    ]
                self._step(r, logits[-1], sp, gens[r], seqs, outs, sample_lps, cum, text, finish, reason)
            active, first = [r for r in active if finish[r] is None], False
        return [
            RequestOutput(
                str(next(self._ids)),
                p if isinstance(p, str) else None,
                i,
                prompt_lps[r],
                [
                    CompletionOutput(
                        0,
                        text[r],
                        outs[r],
                        cum[r],
                        sample_lps[r] if sp.logprobs is not None else None,
                        finish[r],
                        reason[r],
                    )
                ],
                True,
                lora,
            )
            for r, (p, i, sp) in enumerate(zip(prompts, ids, params, strict=True))
        ]

    def _step(self, r, logits, sp, gen, seqs, outs, sample_lps, cum, text, finish, reason) -> None:
        """Choose request ``r``'s next token from its last logits and check whether it is finished."""
        raw = torch.log_softmax(logits, dim=-1)
        masked = logits.clone()
        if sp.allowed_token_ids is not None:
            keep = torch.zeros_like(masked, dtype=torch.bool)
            keep[list(sp.allowed_token_ids)] = True
            masked[~keep] = -float("inf")
        if gen is None:
            token = int(masked.argmax())
        else:
            token = int(torch.multinomial(torch.softmax(masked / sp.temperature, -1), 1, generator=gen))
        if sp.logprobs is not None:
            source = raw if self.logprobs_mode == "raw_logprobs" else torch.log_softmax(masked, dim=-1)
            sample_lps[r].append(self._top(source, sp.logprobs, token))
        cum[r] += float(raw[token])
        seqs[r].append(token)
        outs[r].append(token)
        text[r] = self.tokenizer.decode(outs[r], skip_special_tokens=sp.skip_special_tokens)
        stops = [sp.stop] if isinstance(sp.stop, str) else list(sp.stop or [])
        if token in set(sp.stop_token_ids or ()) or (not sp.ignore_eos and token in self.eos):
            finish[r], reason[r] = "stop", (token if token in set(sp.stop_token_ids or ()) else None)
            return
        hit = min((s for s in stops if s in text[r]), key=text[r].find, default=None)
        if hit is not None:
            finish[r], reason[r] = "stop", hit
            if not sp.include_stop_str_in_output:
                text[r] = text[r][: text[r].find(hit)]
        elif len(outs[r]) >= (sp.max_tokens or 1):
            finish[r] = "length"


#: the logprobs mode an LLM built without ``logprobs_mode`` uses (a test sets it through :func:`install`)
DEFAULT_LOGPROBS_MODE = "raw_logprobs"


def install(monkeypatch, logprobs_mode: str = "raw_logprobs") -> types.ModuleType:
    """Make ``import vllm`` (and ``vllm.lora.request``, ``vllm.outputs``) resolve to this fake for one
    test."""
    if logprobs_mode not in LOGPROBS_MODES:
        raise ValueError(logprobs_mode)
    monkeypatch.setattr(sys.modules[__name__], "DEFAULT_LOGPROBS_MODE", logprobs_mode)
    monkeypatch.setattr(LLM, "instances", [])
    mods = {}
    for name in (
        "vllm",
        "vllm.lora",
        "vllm.lora.request",
        "vllm.outputs",
        "vllm.sampling_params",
        "vllm.logprobs",
    ):
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=name in ("vllm", "vllm.lora"))
        mods[name] = mod
    mods["vllm"].LLM, mods["vllm"].SamplingParams = LLM, SamplingParams
    mods["vllm"].lora, mods["vllm.lora"].request = mods["vllm.lora"], mods["vllm.lora.request"]
    mods["vllm.lora.request"].LoRARequest = LoRARequest
    mods["vllm.outputs"].RequestOutput, mods["vllm.outputs"].CompletionOutput = (
        RequestOutput,
        CompletionOutput,
    )
    mods["vllm.sampling_params"].SamplingParams = SamplingParams
    mods["vllm.logprobs"].Logprob = Logprob
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return mods["vllm"]
