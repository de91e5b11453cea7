"""Where a trained student's rating readout stands, apart from its own reasoning: the expected rating
(the ``student_expected`` readout: the softmax over the ratings' tokens after "Predicted User Rating:")
read after the *teacher's* reasoning, teacher-forced, on training pairs and on test pairs, and after the
prompt alone on training pairs (the rating-only form; on test pairs the run's own evaluation reports it as
``student_direct_expected``). Compare with the same run's metrics.json (user mean, biased MF).

    python benchmarks/readout_probe.py <artifacts>/students/<run> [--pairs 200]
    python benchmarks/readout_probe.py <run> --checkpoints a.ckpt b.ckpt   # a learning curve

With --checkpoints, each checkpoint's weights are probed in turn (copies of the run's checkpoints/last.ckpt
taken while it trains; the run need not have finished).

Test pairs have no teacher rationale (the teacher annotates training pairs only); theirs is written here
by the extractive teacher's compact (or scored) form from the two profiles in the student's prompt, which
is what the teacher writes for a training pair (``prompt=exp3rt_compact`` or ``exp3rt_scored``; other forms
are refused). When the readout after the teacher's reasoning is no better than after the student's own,
the reasoning is not what holds the student back: the readout is.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exp3rt.data.prepare import prepare_dataset  # noqa: E402
from exp3rt.data.splits import prepare_split  # noqa: E402
from exp3rt.student.examples import build_examples  # noqa: E402
from exp3rt.student.lightning import answer_logits  # noqa: E402
from exp3rt.student.prompts import StudentPrompts  # noqa: E402
from exp3rt.student.ratings import RatingTokens  # noqa: E402
from exp3rt.student.tokenize import collate, encode  # noqa: E402
from exp3rt.teacher.annotate import find_annotation_dir  # noqa: E402
from exp3rt.teacher.backends.extractive import ExtractiveBackend  # noqa: E402


def readout_rmse(model, tok, examples, ids, values, batch: int = 16) -> float:
    """RMSE of the expected rating at each example's rating position, teacher-forced."""
    errs: list[float] = []
    vals = torch.tensor(values)
    for i in range(0, len(examples), batch):
        chunk = examples[i : i + batch]
        b = collate([encode(tok, e, 1024) for e in chunk], tok.pad_token_id)
        with torch.no_grad():
            logits, labels, mask = answer_logits(model, b)
        pos = mask[:, 1:].float().argmax(dim=1)
        p = torch.softmax(logits[torch.arange(len(chunk)), pos][:, ids].float(), dim=-1)
        truth = torch.tensor([float(e.meta["rating"]) for e in chunk])
        errs += (((p * vals).sum(-1) - truth) ** 2).tolist()
    return float(np.sqrt(np.mean(errs)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("student", type=Path, help="a finished student run directory (with adapter/, train.json)")
    ap.add_argument("--pairs", type=int, default=200, help="training and test pairs each (random, seed 0)")
    ap.add_argument(
        "--checkpoints",
        type=Path,
        nargs="*",
        default=[],
        help="Lightning checkpoints of this run: probe each one's weights instead of the finished student's",
    )
    args = ap.parse_args()
    cfg = OmegaConf.load(args.student / "config.yaml")
    form = str(cfg.prompt.get("rationale_form", "narrative"))
    if form not in ("compact", "scored"):
        sys.exit(
            f"{args.student}: the probe writes test rationales in the compact or scored form; this run used "
            f"prompt.rationale_form={cfg.prompt.get('rationale_form')}"
        )
    prepared = prepare_dataset(cfg.dataset, cfg.paths.data_dir)
    split = prepare_split(prepared, cfg.split)
    scale, domain = prepared.dataset.scale, str(cfg.dataset.domain)
    done = args.student / "train.json"  # a run still training has its config but no train.json yet
    if done.is_file():
        annotations = Path(json.loads(done.read_text())["annotations_dir"])
    else:
        annotations = find_annotation_dir(cfg, prepared, split)
    ex = build_examples(
        annotations,
        split,
        prepared.dataset.items,
        domain,
        scale,
        cfg.sft,
        ablation=cfg.ablation,
        prompt=cfg.student_prompt,
    )
    rnd = random.Random(0)
    train = [e for e in ex["train"] if e.task == "rating"]
    test = [e for e in ex["test"] if e.task == "rating"]
    rnd.shuffle(train)
    rnd.shuffle(test)
    train, test = train[: args.pairs], test[: args.pairs]
    ratings = RatingTokens.from_config(scale, offset=float(cfg.sft.rating_offset))
    prompts = StudentPrompts(cfg.student_prompt, domain, ratings)
    teacher = ExtractiveBackend.__new__(ExtractiveBackend)  # compact_rationale reads no backend state

    def with_teacher_reasoning(e):
        (u0, u1), (i0, i1) = e.meta["cut_spans"][:2]  # the user's and the item's profile in the prompt
        scored = (float(scale.min), float(scale.max)) if form == "scored" else None
        why = teacher.compact_rationale(e.user[u0:u1], e.user[i0:i1], domain, scored)
        return replace(e, answer=prompts.answer(float(e.meta["rating"]), why))

    # a finished full fine-tune saves its weights and tokenizer in adapter/; checkpoints load into the base
    tok_dir = args.student / "adapter"
    if args.checkpoints or not (tok_dir / "config.json").is_file():
        tok_dir = Path(str(cfg.student.model_path))
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    dtype = getattr(torch, str(cfg.student.dtype)) if str(cfg.student.dtype) != "auto" else "auto"
    model = AutoModelForCausalLM.from_pretrained(str(tok_dir), dtype=dtype).eval()
    seqs = ratings.token_ids(tok, prompts.rating_prefix)
    if any(len(s) != 1 for s in seqs):
        sys.exit("the probe reads one token per rating; this tokenizer splits some ratings")
    ids, values = [s[0] for s in seqs], [float(r) for r in ratings.ratings]
    direct = [e for e in ex["train"] if e.task == "rating_direct"]
    rnd.shuffle(direct)
    taught = [with_teacher_reasoning(e) for e in test]

    def probe(model) -> dict[str, float]:
        rows = {
            "train pairs, after the teacher's reasoning": readout_rmse(model, tok, train, ids, values),
            "test pairs, after the teacher's reasoning": readout_rmse(model, tok, taught, ids, values),
        }
        if direct:
            rows["train pairs, rating-only form"] = readout_rmse(
                model, tok, direct[: args.pairs], ids, values
            )
        return rows

    print(f"{args.student.name}: {len(train)} training and {len(test)} test pairs (random, seed 0)\n")
    if not args.checkpoints:
        print("| readout (teacher-forced) | RMSE |\n|---|---|")
        for name, value in probe(model).items():
            print(f"| {name} | {value:.4f} |")
        return
    table = []
    for path in args.checkpoints:
        state = torch.load(path, map_location="cpu", weights_only=False)
        weights = {k.removeprefix("model."): v for k, v in state["state_dict"].items()}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected or [
            k for k in missing if k != "lm_head.weight"
        ]:  # lm_head may be tied to the embeddings
            sys.exit(f"{path}: not this run's weights (missing {missing[:3]}, unexpected {unexpected[:3]})")
        table.append((int(state["global_step"]), probe(model.eval())))
        print(f"  step {table[-1][0]}: " + ", ".join(f"{v:.4f}" for v in table[-1][1].values()), flush=True)
    names = list(table[0][1])
    print("| step | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for step, rows in sorted(table):
        print(f"| {step} | " + " | ".join(f"{rows[n]:.4f}" for n in names) + " |")


if __name__ == "__main__":
    main()
