"""Student predictions for rating examples: reasoning then readout (``full``) or readout only (``fast``)."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

from omegaconf import OmegaConf

from exp3rt.config import ConfigError
from exp3rt.devices import free_memory, resolve_device
from exp3rt.inference.prediction import Prediction
from exp3rt.student.prompts import StudentPrompts
from exp3rt.student.ratings import RatingTokens
from exp3rt.student.tokenize import render
from exp3rt.teacher.backends.extractive import recompute_estimate

_LOADED: dict = {}  # the student of the evaluation in progress: predictions, the rating-only readout and
# reranking share one load (an 8B model takes minutes to load); released when the evaluation ends


def load_student(tcfg, adapter_dir: Path, device: str | None = "auto", merge_lora: bool = True):
    """The trained student on ``device`` (``eval.device``): base model + adapter (or a full/merged model
    folder) and its tokenizer. ``merge_lora`` folds a LoRA adapter into the weights (``merge_and_unload``):
    the same function, without the adapter's extra matrix products at every layer of every step.
    Loaded once per evaluation (:func:`release_students` frees it)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # heavy: torch
    from exp3rt.student.model import DTYPES, ensure_model_folder

    target = resolve_device(device)
    key = (str(Path(adapter_dir).resolve()), str(target), bool(merge_lora), str(tcfg.student.dtype))
    if key in _LOADED:
        return _LOADED[key]
    release_students()  # one student in memory at a time
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = DTYPES.get(str(tcfg.student.dtype), torch.float32)
    if (adapter_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(str(ensure_model_folder(tcfg.student)), dtype=dtype)
        model = PeftModel.from_pretrained(base, str(adapter_dir))
        if (
            merge_lora
            and getattr(model, "peft_type", None) is not None
            and str(model.peft_type).endswith("LORA")
        ):
            model = model.merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(adapter_dir), dtype=dtype)
    model = model.to(target).eval()
    _LOADED[key] = (model, tokenizer)
    return model, tokenizer


def release_students() -> None:
    """Drop the student :func:`load_student` keeps for the evaluation in progress."""
    if _LOADED:
        _LOADED.clear()
        free_memory()


def student_for(tcfg, adapter_dir: Path, ev):
    """:func:`load_student` with the evaluation's ``eval.device`` and ``eval.merge_lora``."""
    return load_student(tcfg, Path(adapter_dir), ev.get("device", "auto"), bool(ev.get("merge_lora", True)))


def estimate_rewrite(tcfg, ev):
    """The tool ``eval.compute_estimate`` puts between a reasoning and its readout: the scored rationale's
    estimate recomputed from the lists and averages the student wrote (:func:`exp3rt.teacher.backends.
    extractive.recompute_estimate`); None when the key is off. A student trained on another rationale
    form writes no estimate: that is a config error, not a silent no-op."""
    if not ev.get("compute_estimate"):
        return None
    form = str(OmegaConf.select(tcfg, "prompt.rationale_form", default=None))
    if form != "scored":
        raise ConfigError(
            "config key 'eval.compute_estimate' is true but the student was trained on the "
            f"'{form}' rationale, which writes no estimate (it needs prompt.rationale_form=scored): "
            "set eval.compute_estimate=false"
        )
    domain, scale = str(tcfg.dataset.domain), (float(tcfg.dataset.scale.min), float(tcfg.dataset.scale.max))
    return partial(recompute_estimate, domain=domain, scale=scale)


def backend_of(ev) -> str:
    """``eval.backend`` (``hf`` when a config predates the key)."""
    return str(getattr(ev, "backend", None) or "hf")


def predict(tcfg, adapter_dir: Path, examples, ev) -> list[Prediction]:
    """The student's reasoning and readouts for rating examples, on ``eval.backend`` (hf | vllm): both
    backends give the same :class:`Prediction` fields (greedy reasoning token for token, readouts within
    float rounding)."""
    # heavy: torch
    from exp3rt.inference.readout import generate_and_read, readout_only

    scale = (float(tcfg.dataset.scale.min), float(tcfg.dataset.scale.max))
    ratings = RatingTokens(scale[0], scale[1], float(tcfg.dataset.scale.step), float(tcfg.sft.rating_offset))
    prefix = StudentPrompts(tcfg.student_prompt, str(tcfg.dataset.domain), ratings).rating_prefix
    fast = str(ev.mode) == "fast" or not tcfg.ablation.reasoning
    max_new = int(ev.max_new_tokens or tcfg.student.max_new_tokens)
    sampling = {"do_sample": bool(ev.do_sample), "temperature": float(ev.temperature), "seed": int(ev.seed)}
    if backend_of(ev) == "vllm":
        # heavy: torch, vllm
        from exp3rt.inference.vllm_backend import load_vllm_student

        student = load_vllm_student(tcfg, Path(adapter_dir), ev, ratings)
        tok = student.tokenizer
        prompts = [render(tok, ex, add_answer=False)[0] for ex in examples]
        if fast:
            pairs = [(None, r) for r in student.readout_only(prompts, ratings, prefix)]
        else:
            pairs = student.generate_and_read(prompts, ratings, max_new, prefix, **sampling)
    else:
        model, tok = student_for(tcfg, adapter_dir, ev)
        prompts = [render(tok, ex, add_answer=False)[0] for ex in examples]
        if fast:
            reads = readout_only(model, tok, prompts, ratings, prefix, batch_size=int(ev.batch_size))
            pairs = [(None, r) for r in reads]
        else:
            pairs = generate_and_read(
                model,
                tok,
                prompts,
                ratings,
                max_new,
                prefix,
                batch_size=int(ev.batch_size),
                rewrite=estimate_rewrite(tcfg, ev),
                **sampling,
            )
    out: list[Prediction] = []
    for ex, (gen, read) in zip(examples, pairs, strict=True):
        text = gen.text if gen is not None else ""
        reasoning = text.split(prefix.rstrip())[0].strip()
        if reasoning.startswith("Reasoning:"):
            reasoning = reasoning[len("Reasoning:") :].strip()
        out.append(
            Prediction(
                user_id=str(ex.meta["user_id"]),
                item_id=str(ex.meta["item_id"]),
                truth=float(ex.meta["rating"]),
                warm=bool(ex.meta.get("warm", True)),
                reasoning=reasoning,
                probs={f"{r:g}": float(p) for r, p in zip(read.ratings, read.probs, strict=True)},
                rating_argmax=float(read.most_likely),
                rating_expected=float(read.expected),
                valid_mass=None if math.isnan(read.mass) else float(read.mass),
                finish=gen.stop_reason if gen is not None else None,
                written=gen.written if gen is not None else None,
            )
        )
    return out
