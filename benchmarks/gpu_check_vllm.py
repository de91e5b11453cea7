"""GPU check for ``eval.backend=vllm`` (run by hand on a GPU machine; not part of CI or ``make bench``).

Compares the vLLM backend with the HF path on a real small model and prints agreement and throughput:

    make smollm2                       # or point EXP3RT_SMOLLM2_DIR (or --model) at a SmolLM2 folder
    pip install -e ".[vllm]"
    python benchmarks/gpu_check_vllm.py                         # float32, 64 prompts, 48 new tokens
    python benchmarks/gpu_check_vllm.py --dtype bfloat16 --tol 2e-2 --prompts 256 --json
    python benchmarks/gpu_check_vllm.py --adapter outputs/train/<run>/adapter --model <its base model>

Three comparisons, each on both rating scales (1–5, and 1–10 where "10" is two tokens):

* **fast readout** — ``readout_only`` vs :meth:`VllmStudent.readout_only` on the same prompts;
* **readout after reasoning** — greedy ``generate_and_read`` on both; the readouts are compared on the HF
  reasoning (``VllmStudent.read`` on the same tokens), because greedy decoding in different kernels can
  part at a near-tie, which is not a readout difference; how many reasonings are identical token for
  token is reported beside it;
* **rerank scoring** — ``score_candidates`` (fast mode) with the prompts grouped into users that share a
  profile.

Reported: the largest |Δp| over all ratings, the share of equal most-likely ratings, the mean |Δ expected|,
and pairs/s (and generated tokens/s) of each backend after one warm-up call (vLLM's engine start and
CUDA-graph capture are not timed). Exit status 1 when a probability differs by more than ``--tol``
(float32 kernels agree to about 1e-4; bfloat16 needs a looser bound).

``--dry-run`` runs the vLLM side through ``tests/fake_vllm.py`` on CPU: it checks this script and the
backend's plumbing, not vLLM (use a few prompts: ``--dry-run --prompts 4 --new-tokens 8``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROFILES = (
    "[Like]\n- Tense plots.\n- Strong acting.\n[Dislike]\n- Slow pacing.",
    "[Like]\n- Long battery life.\n- A clear screen.\n[Dislike]\n- Weak speakers.",
    "[Like]\n- Warm characters.\n[Dislike]\n- Predictable endings.\n- Too many side plots.",
    "[Like]\n- Good value.\n[Dislike]\n- Flimsy build.",
)
DESCRIPTIONS = (
    "a heist story with twists",
    "a quiet family drama",
    "a fast science-fiction chase",
    "a documentary about bridges",
    "a romantic comedy set in Lisbon",
)


def rating_prompts(tok, n_users: int, per_user: int) -> dict[str, list[tuple[str, str]]]:
    """``{user: [(item, prompt), ...]}``: the project's rating prompt, one profile per user, items varying."""
    from exp3rt.student.prompts import StudentPrompts, load_student_prompt
    from exp3rt.student.ratings import RatingTokens
    from exp3rt.student.tokenize import render_prompt

    prompts = StudentPrompts(load_student_prompt("exp3rt_v1"), "movie", RatingTokens(1, 5))
    out: dict[str, list[tuple[str, str]]] = {}
    for u in range(n_users):
        rows = []
        for j in range(per_user):
            k = u * per_user + j
            sections = {
                "user_profile": PROFILES[u % len(PROFILES)],
                "item_description": f"Item {k}: "
                + (DESCRIPTIONS[k % len(DESCRIPTIONS)] + ". ") * (1 + k % 4),
                "item_profile": "[Like]\n- The pacing.\n"
                + "- The cast.\n" * (k % 3)
                + "[Dislike]\n- The ending.",
            }
            system, user = prompts.rating_messages(sections, reasoning=True)
            rows.append((f"item{k}", render_prompt(tok, system, user.text)))
        out[f"user{u}"] = rows
    return out


def agreement(hf, vl) -> dict:
    """Largest |Δp|, share of equal most-likely ratings, mean |Δ expected| between two readout lists."""
    dp = max(abs(a - b) for x, y in zip(hf, vl, strict=True) for a, b in zip(x.probs, y.probs, strict=True))
    return {
        "max_abs_dp": dp,
        "argmax_agree": statistics.mean(
            float(x.most_likely == y.most_likely) for x, y in zip(hf, vl, strict=True)
        ),
        "mean_abs_d_expected": statistics.mean(
            abs(x.expected - y.expected) for x, y in zip(hf, vl, strict=True)
        ),
    }


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - t0, value


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--model",
        default=os.environ.get(
            "EXP3RT_SMOLLM2_DIR", str(REPO / "artifacts" / "models" / "smollm2-135m-instruct")
        ),
        help="a model folder (default: EXP3RT_SMOLLM2_DIR or artifacts/models/smollm2-135m-instruct)",
    )
    ap.add_argument(
        "--adapter", default=None, help="a peft adapter folder on --model (served as a LoRARequest)"
    )
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--prompts", type=int, default=64, help="rating prompts (users x 8 candidates)")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16, help="HF batch size")
    ap.add_argument(
        "--gpu-memory-utilization", type=float, default=0.5, help="vLLM's share (HF shares the GPU)"
    )
    ap.add_argument("--tol", type=float, default=1e-3, help="largest |Δp| accepted")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="the vLLM side through tests/fake_vllm.py on CPU")
    args = ap.parse_args(argv)

    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    if args.dry_run:
        import pytest

        sys.path.insert(0, str(REPO / "tests"))
        import fake_vllm

        fake_vllm.install(pytest.MonkeyPatch())
    elif not torch.cuda.is_available():
        print("no CUDA GPU: vLLM needs one (use --dry-run to check the script on CPU)", file=sys.stderr)
        return 2
    from exp3rt.config import EvalConf
    from exp3rt.inference.readout import generate_and_read, readout_only
    from exp3rt.inference.rerank import score_candidates
    from exp3rt.inference.vllm_backend import load_vllm_student
    from exp3rt.student.ratings import RATING_PREFIX, RatingTokens

    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        print(
            f"no model folder at {model_dir}: run `make smollm2` or set EXP3RT_SMOLLM2_DIR / --model",
            file=sys.stderr,
        )
        return 2
    served = Path(args.adapter) if args.adapter else model_dir
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    # the engine first: vLLM starts its workers more simply before this process has touched CUDA
    tcfg = OmegaConf.create(
        {"student": {"model_path": str(model_dir), "build_tiny": False, "dtype": args.dtype}}
    )
    ev = OmegaConf.structured(
        EvalConf(backend="vllm", vllm_gpu_memory_utilization=args.gpu_memory_utilization)
    )
    t_load, student = timed(load_vllm_student, tcfg, served, ev, RatingTokens(1, 10))
    tok = student.tokenizer
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device).eval()
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(served)).eval()

    per_user = 8
    by_user = rating_prompts(tok, max(1, args.prompts // per_user), per_user)
    prompts = [p for rows in by_user.values() for _, p in rows]
    n = len(prompts)
    readout_only(model, tok, prompts[:2], RatingTokens(1, 5))  # warm-up
    student.readout_only(prompts[:2], RatingTokens(1, 5))
    res: dict = {
        "model": str(model_dir),
        "adapter": args.adapter,
        "dtype": args.dtype,
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "dry_run": args.dry_run,
        "prompts": n,
        "new_tokens": args.new_tokens,
        "vllm_engine_start_s": t_load,
    }
    worst = 0.0
    for name, ratings in (("1-5", RatingTokens(1, 5)), ("1-10", RatingTokens(1, 10))):
        t_hf, hf = timed(readout_only, model, tok, prompts, ratings, batch_size=args.batch_size)
        t_vl, vl = timed(student.readout_only, prompts, ratings)
        res[f"fast/{name}"] = {**agreement(hf, vl), "hf_pairs_per_s": n / t_hf, "vllm_pairs_per_s": n / t_vl}
        worst = max(worst, res[f"fast/{name}"]["max_abs_dp"])

        t_hf, hf_pairs = timed(
            generate_and_read, model, tok, prompts, ratings, args.new_tokens, batch_size=args.batch_size
        )
        t_vl, vl_pairs = timed(student.generate_and_read, prompts, ratings, args.new_tokens)
        sep, prefix = (
            tok("\n", add_special_tokens=False)["input_ids"],
            tok(RATING_PREFIX, add_special_tokens=False)["input_ids"],
        )
        contexts = [
            g.prompt_ids
            + g.new_token_ids
            + (sep if g.new_token_ids and not g.text.endswith("\n") else [])
            + prefix
            for g, _ in hf_pairs
        ]
        same_reads = student.read(contexts, ratings)
        tokens_hf = sum(len(g.new_token_ids) for g, _ in hf_pairs)
        tokens_vl = sum(len(g.new_token_ids) for g, _ in vl_pairs)
        res[f"full/{name}"] = {
            **agreement([r for _, r in hf_pairs], same_reads),
            "reasoning_identical": statistics.mean(
                float(a.new_token_ids == b.new_token_ids)
                for (a, _), (b, _) in zip(hf_pairs, vl_pairs, strict=True)
            ),
            "end_to_end": agreement([r for _, r in hf_pairs], [r for _, r in vl_pairs]),
            "hf_pairs_per_s": n / t_hf,
            "vllm_pairs_per_s": n / t_vl,
            "hf_gen_tokens_per_s": tokens_hf / t_hf,
            "vllm_gen_tokens_per_s": tokens_vl / t_vl,
        }
        worst = max(worst, res[f"full/{name}"]["max_abs_dp"])

        t_hf, hf_scores = timed(
            score_candidates, model, tok, by_user, ratings, mode="fast", batch_size=args.batch_size * 2
        )
        t_vl, vl_scores = timed(student.score_candidates, by_user, ratings, mode="fast")
        dp = max(
            abs(a - b)
            for u in hf_scores
            for x, y in zip(hf_scores[u], vl_scores[u], strict=True)
            for a, b in zip(x[2], y[2], strict=True)
        )
        d_exp = statistics.mean(
            abs(x[1] - y[1]) for u in hf_scores for x, y in zip(hf_scores[u], vl_scores[u], strict=True)
        )
        res[f"rerank/{name}"] = {
            "max_abs_dp": dp,
            "mean_abs_d_expected": d_exp,
            "hf_candidates_per_s": n / t_hf,
            "vllm_candidates_per_s": n / t_vl,
        }
        worst = max(worst, dp)
    res["max_abs_dp"], res["tol"], res["pass"] = worst, args.tol, worst <= args.tol

    if args.json:
        print(json.dumps(res, indent=2))
    else:
        where = res["gpu"] or ("CPU, fake vLLM (dry run)" if args.dry_run else device)
        print(
            f"{model_dir.name}{' + ' + served.name if args.adapter else ''} {args.dtype} on {where}: "
            f"{n} prompts, "
            f"{args.new_tokens} new tokens; vLLM engine start {t_load:.1f} s"
        )
        print(f"{'check':<14}{'max|dp|':>10}{'argmax=':>9}{'mean|dE|':>10}{'HF /s':>9}{'vLLM /s':>9}  notes")
        for key in [k for k in res if "/" in k]:
            r = res[key]
            hf_rate = r.get("hf_pairs_per_s", r.get("hf_candidates_per_s"))
            vl_rate = r.get("vllm_pairs_per_s", r.get("vllm_candidates_per_s"))
            note = (
                f"reasoning identical {r['reasoning_identical']:.0%}; gen tok/s HF "
                f"{r['hf_gen_tokens_per_s']:.0f}, "
                f"vLLM {r['vllm_gen_tokens_per_s']:.0f}; end-to-end max|dp| "
                f"{r['end_to_end']['max_abs_dp']:.1e}"
                if key.startswith("full/")
                else ""
            )
            argmax = f"{r['argmax_agree']:.0%}" if "argmax_agree" in r else "-"
            print(
                f"{key:<14}{r['max_abs_dp']:>10.1e}{argmax:>9}{r['mean_abs_d_expected']:>10.1e}"
                f"{hf_rate:>9.1f}{vl_rate:>9.1f}  "
                f"{note}"
            )
        print(f"{'PASS' if res['pass'] else 'FAIL'}: largest |dp| {worst:.2e} (tolerance {args.tol:g})")
    return 0 if res["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
