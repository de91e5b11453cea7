"""Student predictions for rating examples: reasoning then readout (``full``) or readout only (``fast``)."""

from __future__ import annotations

from pathlib import Path

from exp3rt.evaluation.evaluate import Prediction


def load_student(tcfg, adapter_dir: Path):
    """The trained student: base model + adapter (or a full/merged model folder) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from exp3rt.student.model import DTYPES, ensure_model_folder

    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = DTYPES.get(str(tcfg.student.dtype), torch.float32)
    if (adapter_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(str(ensure_model_folder(tcfg.student)), dtype=dtype)
        model = PeftModel.from_pretrained(base, str(adapter_dir))
    else:
        model = AutoModelForCausalLM.from_pretrained(str(adapter_dir), dtype=dtype)
    return model.eval(), tokenizer


def predict(tcfg, adapter_dir: Path, examples, ev) -> list[Prediction]:
    from exp3rt.inference.parse import parse_rating
    from exp3rt.inference.readout import generate_and_read, readout_only
    from exp3rt.student.prompts import StudentPrompts
    from exp3rt.student.ratings import RatingTokens
    from exp3rt.student.tokenize import render

    scale = (float(tcfg.dataset.scale.min), float(tcfg.dataset.scale.max))
    ratings = RatingTokens(scale[0], scale[1], float(tcfg.dataset.scale.step), float(tcfg.sft.rating_offset))
    prefix = StudentPrompts(tcfg.student_prompt, str(tcfg.dataset.domain), ratings).rating_prefix
    model, tok = load_student(tcfg, Path(adapter_dir))
    prompts = [render(tok, ex, add_answer=False)[0] for ex in examples]
    max_new = int(ev.max_new_tokens or tcfg.student.max_new_tokens)
    out: list[Prediction] = []
    if str(ev.mode) == "fast" or not tcfg.ablation.reasoning:
        reads = readout_only(model, tok, prompts, ratings, prefix, batch_size=int(ev.batch_size))
        pairs = [(None, r) for r in reads]
    else:
        pairs = generate_and_read(model, tok, prompts, ratings, max_new, prefix, batch_size=int(ev.batch_size),
                                  do_sample=bool(ev.do_sample), temperature=float(ev.temperature), seed=int(ev.seed))
    for ex, (gen, read) in zip(examples, pairs, strict=True):
        text = gen.text if gen is not None else ""
        parsed = parse_rating(text, *scale, from_text=ratings.from_text) if gen is not None else None
        reasoning = text.split(prefix.rstrip())[0].strip()
        if reasoning.startswith("Reasoning:"):
            reasoning = reasoning[len("Reasoning:"):].strip()
        out.append(Prediction(
            user_id=str(ex.meta["user_id"]), item_id=str(ex.meta["item_id"]), truth=float(ex.meta["rating"]),
            warm=bool(ex.meta.get("warm", True)), reasoning=reasoning,
            probs={f"{r:g}": float(p) for r, p in zip(read.ratings, read.probs, strict=True)},
            rating_argmax=float(read.most_likely), rating_expected=float(read.expected), rating_parsed=parsed,
        ))
    return out
