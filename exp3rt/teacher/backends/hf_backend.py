"""``hf``: a transformers causal LM run in-process as the teacher.

The model and tokenizer load from a local folder (``teacher.model_path``; never the hub). Requests are
answered in left-padded batches of up to ``teacher.batch_size`` that share their sampling parameters;
generation runs in a worker thread so the event loop (the client's rate limiter, other stages) stays
free, one batch at a time (a lock: one model, one forward at a time).

* Chat formatting: the tokenizer's ``apply_chat_template(..., add_generation_prompt=True)`` when it has
  a template, else a plain ``System: …\\nUser: …\\nAssistant:`` transcript.
* A prompt longer than ``teacher.max_input_tokens`` loses tokens from the *start of its last user
  message* (the instructions in the system turn and the end of the user turn, where the question
  sits, are kept); every truncation is counted in :attr:`HFBackend.truncated` and logged.
* ``temperature == 0`` is greedy; otherwise sampling with ``temperature``/``top_p``, seeded from the
  request's ``seed`` or ``teacher.seed`` (mixed with the batch's messages) through a private
  :class:`torch.Generator`: a seeded request samples the same answer on every run and in any order,
  and the global RNG is never touched.
* Responses carry real token counts (prompt tokens without padding; generated tokens up to and
  including the end-of-turn token) and ``finish_reason`` ``"stop"`` (end-of-turn emitted) or
  ``"length"`` (``max_tokens`` reached).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

from exp3rt.devices import resolve_device
from exp3rt.teacher.backends.base import ChatRequest, ChatResponse, PermanentError

log = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16"}
_DTYPES.update({"bfloat16": "bfloat16", "bf16": "bfloat16", "auto": "auto"})


class HFBackend:
    """An in-process transformers teacher; see the module docstring."""

    name = "hf"

    def __init__(self, cfg: Any):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = getattr(cfg, "model_path", None)
        if not path or not Path(path).is_dir():
            raise PermanentError(
                f"hf backend: teacher.model_path must be a local model folder (got {path!r}); "
                f"build one with exp3rt.models.tiny.build_tiny_llama or exp3rt.models.smollm2.prepare_smollm2"
            )
        dtype_name = _DTYPES[str(getattr(cfg, "dtype", "float32"))]  # a config.TeacherDtype value
        dtype = dtype_name if dtype_name == "auto" else getattr(torch, dtype_name)
        self.model_path = str(path)
        # the label goes into cache keys: TeacherConf's default label names the extractive lexicon,
        # so an hf run that left it unset is labelled by its folder instead
        label = getattr(cfg, "model", None)
        self.model = str(label) if label and label != "vader-lexicon" else Path(path).name
        self.device = resolve_device(getattr(cfg, "device", "auto"), "teacher.device")
        self.batch_size = max(1, int(getattr(cfg, "batch_size", 8)))
        self.max_input_tokens = int(getattr(cfg, "max_input_tokens", 2048))
        self.seed = getattr(cfg, "seed", None)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            # decoder-only models often ship without one; padding is masked out, any id works
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.hf_model = AutoModelForCausalLM.from_pretrained(
            self.model_path, dtype=dtype, local_files_only=True
        ).to(self.device)
        self.hf_model.eval()
        self.stop_ids = self._stop_ids()
        self.truncated = 0  # prompts cut to fit max_input_tokens
        self._lock = threading.Lock()

    def _stop_ids(self) -> set[int]:
        ids: set[int] = set()
        gen_eos = getattr(self.hf_model.generation_config, "eos_token_id", None)
        for x in gen_eos if isinstance(gen_eos, list | tuple) else [gen_eos]:
            if x is not None:
                ids.add(int(x))
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return ids

    # --- protocol ---------------------------------------------------------------------------------
    async def complete(self, request: ChatRequest) -> ChatResponse:
        return (await self.complete_batch([request]))[0]

    async def complete_batch(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        return await asyncio.to_thread(self.generate, list(requests))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    async def aclose(self) -> None:
        self.hf_model = None  # let the weights go
        import gc

        gc.collect()

    # --- prompts ----------------------------------------------------------------------------------
    def render(self, messages: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> str:
        """The prompt text for ``messages``, ending where the assistant's answer begins."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": r, "content": c} for r, c in messages], add_generation_prompt=True, tokenize=False
            )
        lines = [f"{role.capitalize()}: {content}" for role, content in messages]
        return "\n".join(lines) + "\nAssistant:"

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        """Token ids of the rendered prompt, cut from the left of the last user message to fit."""
        messages = [tuple(m) for m in request.messages]
        ids = self._encode(self.render(messages))
        if len(ids) <= self.max_input_tokens:
            return ids
        users = [i for i, (role, _) in enumerate(messages) if role == "user"]
        if not users:
            raise PermanentError(
                f"hf backend: a {len(ids)}-token prompt exceeds teacher.max_input_tokens="
                f"{self.max_input_tokens} and has no user message to shorten"
            )
        u = users[-1]
        content_ids = self._encode(messages[u][1])
        original = len(ids)
        excess = len(ids) - self.max_input_tokens
        for _ in range(8):  # re-tokenising at the cut can shift a token or two: tighten and retry
            keep = max(0, len(content_ids) - excess)
            cut = self.tokenizer.decode(content_ids[len(content_ids) - keep :], skip_special_tokens=False)
            messages[u] = (messages[u][0], cut)
            ids = self._encode(self.render(messages))
            if len(ids) <= self.max_input_tokens:
                break
            if keep == 0:
                raise PermanentError(
                    f"hf backend: the prompt without its user message is still {len(ids)} tokens, "
                    f"over teacher.max_input_tokens={self.max_input_tokens}; raise it or shorten the "
                    "system prompt"
                )
            excess += len(ids) - self.max_input_tokens
        self.truncated += 1
        log.warning(
            "hf backend: %s prompt of %d tokens cut to %d from the start of the user message "
            "(teacher.max_input_tokens=%d; %d prompts truncated so far)",
            request.stage,
            original,
            len(ids),
            self.max_input_tokens,
            self.truncated,
        )
        return ids

    def _encode(self, text: str) -> list[int]:
        # the chat template already holds any BOS it wants; the plain format gets none
        return self.tokenizer(text, add_special_tokens=False).input_ids

    # --- generation -------------------------------------------------------------------------------
    def generate(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        """Answer ``requests`` (blocking): grouped by sampling parameters, chunked by batch size."""
        out: list[ChatResponse | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.temperature > 0, r.temperature, r.top_p, r.max_tokens, r.seed), []).append(i)
        with self._lock:
            for idx in groups.values():
                for start in range(0, len(idx), self.batch_size):
                    chunk = idx[start : start + self.batch_size]
                    for i, resp in zip(
                        chunk, self._generate_batch([requests[i] for i in chunk]), strict=True
                    ):
                        out[i] = resp
        return out  # type: ignore[return-value]

    def _generate_batch(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        import torch

        if self.hf_model is None:
            raise PermanentError("hf backend: used after aclose()")
        first = requests[0]
        prompts = [self.prompt_ids(r) for r in requests]
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):  # left padding: the answers all start at column `width`
            input_ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            attention[row, width - len(p) :] = 1
        kwargs: dict[str, Any] = {
            "max_new_tokens": int(first.max_tokens),
            "pad_token_id": pad,
            "eos_token_id": sorted(self.stop_ids) or None,
        }
        sample = first.temperature > 0
        if sample:
            seed = first.seed if first.seed is not None else self.seed
            gen = torch.Generator(device="cpu")
            if seed is not None:
                gen.manual_seed(_batch_seed(int(seed), requests))
            else:
                gen.seed()
            # greedy decoding over a one-hot of our own seeded draw (see _processors)
            kwargs["logits_processor"] = _processors(first.temperature, first.top_p, gen)
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            seqs = self.hf_model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device), **kwargs
            )
        new = seqs[:, width:].cpu().tolist()
        out = []
        for p, row in zip(prompts, new, strict=True):
            stop_at = next((j for j, t in enumerate(row) if t in self.stop_ids), None)
            gen_ids = row if stop_at is None else row[: stop_at + 1]
            text_ids = gen_ids if stop_at is None else gen_ids[:-1]
            out.append(
                ChatResponse(
                    text=self.tokenizer.decode(text_ids, skip_special_tokens=True).strip(),
                    prompt_tokens=len(p),
                    completion_tokens=len(gen_ids),
                    model=self.model,
                    finish_reason="stop" if stop_at is not None else "length",
                )
            )
        return out


def _batch_seed(seed: int, requests: list[ChatRequest]) -> int:
    """A generator seed from the configured seed and the batch's content: the same request (and
    repair attempt) samples the same answer whatever order the client sends it in."""
    body = json.dumps([seed] + [[r.messages, r.attempt] for r in requests], ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(body.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def _processors(temperature: float, top_p: float, generator):
    """Temperature, nucleus filtering and a seeded draw, as one logits processor for greedy decoding.

    ``generate`` samples with the global RNG; to draw from our own :class:`torch.Generator` we let it
    decode greedily and turn the scores into a one-hot of our sample, whose argmax is that sample.
    """
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class SeededSample(LogitsProcessor):
        def __call__(self, input_ids, scores):
            logits = scores.float() / max(float(temperature), 1e-5)
            probs = torch.softmax(logits, dim=-1)
            if top_p < 1.0:
                sorted_p, order = torch.sort(probs, descending=True, dim=-1)
                cum = torch.cumsum(sorted_p, dim=-1)
                drop = cum - sorted_p > top_p  # keep the smallest prefix whose mass reaches top_p
                sorted_p = sorted_p.masked_fill(drop, 0.0)
                probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
                probs = probs / probs.sum(dim=-1, keepdim=True)
            draw = torch.multinomial(probs.cpu(), 1, generator=generator).to(scores.device)
            out = torch.full_like(scores, float("-inf"))
            return out.scatter(-1, draw, 0.0)

    return LogitsProcessorList([SeededSample()])
