"""Inference benchmark on CPU with the tiny student (``build_tiny_llama``, bpe vocabulary).

Two ratios, printed side by side from one run:

1. **batched ÷ one-by-one generation throughput** (goal >= 4x): the same 16 prompts of different
   lengths, greedy, ``--new-tokens`` tokens each (no stop strings, so both arms generate the same
   number of tokens), through :func:`generate_batch` with ``batch_size=16`` and ``batch_size=1``;
   new tokens per second, median over ``--repeats``.
2. **readout ÷ reasoning generation cost** (goal <= 0.10): for the batch of 16, the seconds of
   :func:`read_after` (continuing from the generation's KV cache: one forward over the appended
   prefix, plus one per inner trie node — the 1–10 scale scores "10" as "1","0") divided by the
   seconds of generating the reasoning. For reference the same readout without the cache
   (``readout_only`` over prompt + reasoning + prefix, i.e. re-encoding everything) is timed too.

Model loading and one warm-up call per arm are not timed. ``torch`` uses its default thread count
(printed); on a shared machine run it when the cores are quiet.

    python benchmarks/bench_inference.py                     # hidden 256 x 4 layers, 64 new tokens
    python benchmarks/bench_inference.py --hidden 512 --layers 8 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from exp3rt.inference.generate import generate_batch
from exp3rt.inference.readout import read_after, readout_only
from exp3rt.models.tiny import build_tiny_llama
from exp3rt.student.ratings import RatingTokens

SENTENCES = ("The acting was great but the plot was slow.", "I liked the soundtrack and the camera work.",
             "The ending felt rushed and the dialogue was flat.", "Good value, the battery lasts long.")


def prompts(tok, n: int) -> list[str]:
    out = []
    for i in range(n):
        body = " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(3 + (i * 5) % 17))  # 3..19 sentences
        out.append(tok.apply_chat_template([{"role": "user", "content": f"User profile: {body}\nRate the item."}],
                                           add_generation_prompt=True, tokenize=False))
    return out


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - t0, value


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_llama(tmp, vocab="bpe", hidden=args.hidden, layers=args.layers, heads=args.heads)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        tok = AutoTokenizer.from_pretrained(path)
    ps = prompts(tok, args.prompts)
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in ps]
    n_new = args.new_tokens

    generate_batch(model, tok, ps[:2], 4, batch_size=2)  # warm-up
    generate_batch(model, tok, ps[:1], 4, batch_size=1)

    t_batched, t_single, t_gen, t_read5, t_read10, t_reencode = [], [], [], [], [], []
    r5, r10 = RatingTokens(1, 5), RatingTokens(1, 10)
    for _ in range(args.repeats):
        dt, single = timed(lambda: generate_batch(model, tok, ps, n_new, batch_size=1))
        t_single.append(dt)
        dt, gens = timed(lambda: generate_batch(model, tok, ps, n_new, batch_size=len(ps), keep_state=True))
        t_batched.append(dt)
        t_gen.append(dt)
        assert [g.new_token_ids for g in gens] == [s.new_token_ids for s in single], "batched != one-by-one"
        t_read5.append(timed(read_after, model, tok, gens, r5)[0])
        t_read10.append(timed(read_after, model, tok, gens, r10)[0])
        full = [p + g.text + "\n" for p, g in zip(ps, gens, strict=True)]
        t_reencode.append(timed(readout_only, model, tok, full, r5, batch_size=len(ps))[0])

    total = n_new * len(ps)
    med = statistics.median
    res = {
        "model": {"hidden": args.hidden, "layers": args.layers, "heads": args.heads, "params": sum(p.numel() for p in model.parameters())},
        "torch_threads": torch.get_num_threads(),
        "prompts": len(ps), "prompt_tokens": {"min": min(lengths), "max": max(lengths)}, "new_tokens": n_new,
        "single_step_ms": 1000 * statistics.median(t_single) / (n_new * len(ps)),  # one cached decode step, batch 1
        "batched_tokens_per_s": total / med(t_batched),
        "single_tokens_per_s": total / med(t_single),
        "batched_over_single": med(t_single) / med(t_batched),
        "reasoning_gen_s": med(t_gen),
        "readout_s_1to5": med(t_read5),
        "readout_s_1to10": med(t_read10),
        "readout_over_gen_1to5": med(t_read5) / med(t_gen),
        "readout_over_gen_1to10": med(t_read10) / med(t_gen),
        "reencode_readout_over_gen_1to5": med(t_reencode) / med(t_gen),
        "goals": {"batched_over_single": ">= 4", "readout_over_gen": "<= 0.10"},
    }
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"tiny Llama hidden {args.hidden} x {args.layers} layers ({res['model']['params'] / 1e6:.1f} M params), "
              f"{res['torch_threads']} torch threads, one-by-one decode step {res['single_step_ms']:.1f} ms")
        print(f"{len(ps)} prompts of {min(lengths)}-{max(lengths)} tokens, {n_new} new tokens each, median of {args.repeats}")
        print(f"{'batched / one-by-one throughput':<34}{'readout / generation (1-5)':<30}{'readout / generation (1-10)':<30}")
        print(f"{res['batched_over_single']:<34.2f}{res['readout_over_gen_1to5']:<30.4f}{res['readout_over_gen_1to10']:<30.4f}")
        print(f"  tokens/s batched {res['batched_tokens_per_s']:.0f}, one-by-one {res['single_tokens_per_s']:.0f}; "
              f"readout {1000 * res['readout_s_1to5']:.0f} ms (1-5), {1000 * res['readout_s_1to10']:.0f} ms (1-10) "
              f"vs generation {1000 * res['reasoning_gen_s']:.0f} ms; re-encoding instead: {res['reencode_readout_over_gen_1to5']:.3f}")
    return res


if __name__ == "__main__":
    main()
