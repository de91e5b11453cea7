"""Inference benchmark on CPU: batched vs one-by-one generation, and the cached readout vs generation.

Two ratios:

1. **batched ÷ one-by-one generation throughput** (goal >= 4x): the same 16 prompts of different
   lengths (74–299 tokens), greedy, ``--new-tokens`` tokens each (no stop strings, so both arms
   generate the same tokens), through :func:`generate_batch` with ``batch_size=16`` and ``batch_size=1``.
   Reported end to end (prompt encoding + decoding: new tokens per second) and for decoding alone (each
   arm's time minus its time for one new token, i.e. minus the prompt pass). A third arm runs the batch
   of 16 as it was before (one left-padded prompt pass, a KV cache that concatenates at every step) to
   show what the length-grouped prompt pass and the in-place cache bring, side by side.
2. **readout ÷ reasoning generation cost** (goal <= 0.10): for the batch of 16, the seconds of
   :func:`read_after` (continuing from the generation's KV cache: one forward over the appended
   prefix, plus one per inner trie node — the 1–10 scale scores "10" as "1","0") divided by the
   seconds of generating the reasoning. For reference the same readout without the cache
   (``readout_only`` over prompt + reasoning + prefix, i.e. re-encoding everything) is timed too.
3. **after the calculator's rewrite, re-encoding ÷ continuing the cache**: ``eval.compute_estimate``
   changes a reasoning's last number before the readout. :func:`apply_rewrite` keeps the cached tokens
   the two texts share and :func:`read_after` runs only the changed tail; the arm it replaced encoded
   prompt + rewritten reasoning again (``readout_only``). Both readouts are compared (largest difference
   in any rating's probability).

**Measurement.** The arms are interleaved within each repeat (their order alternating) and each repeat
gives its own ratio; the median and the range over ``--repeats`` are reported, for wall-clock time and
for this process's CPU time. torch runs on ``--threads`` intra-op threads (default 1, printed): with
two threads on a shared 2-core machine every small operator waits for whichever thread the OS has
descheduled, which slowed the one-by-one arm (thousands of tiny forwards) 8–15x and the batched arm 4–6x
here — ratios from such runs measure the contention, not batching. ``--threads 0`` keeps torch's default.
Model loading and one warm-up call per arm are not timed.

**Model size.** ``--preset student`` (the default) is the tiny student the demo and the tests train
(``conf/student/tiny.yaml``: hidden 64 x 2 layers, 0.2 M parameters), where a decoding step is almost
all framework overhead and batching amortises it. ``--preset tiny`` (hidden 256 x 4 layers, 2.8 M
parameters; the default until 2026-11-26) is a harder case: a step there is partly overhead, partly the
attention reading the cache. ``--preset smollm2`` has
SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads; random weights, the offline BPE vocabulary:
100 M parameters), where a step's cost is the model's own; ``--model DIR`` loads a real folder
(e.g. the SmolLM2 one from ``make smollm2``). One left-padded prompt pass would compute 4,784 token
positions for 2,931 prompt tokens; the length groups compute about 3,100. What bounds the ratio now is
decoding: every step of the batch reads the whole left-padded KV cache (a memory-bound attention).

    python benchmarks/bench_inference.py                # the tiny student, 1 thread, 64 new tokens, 5 repeats
    python benchmarks/bench_inference.py --preset tiny  # 4x wider, 2x deeper
    python benchmarks/bench_inference.py --preset smollm2 --repeats 3
    python benchmarks/bench_inference.py --model artifacts/models/smollm2-135m-instruct --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import exp3rt.inference.generate as generation
from exp3rt.inference.generate import generate_batch, length_groups
from exp3rt.inference.readout import apply_rewrite, read_after, readout_only
from exp3rt.models.tiny import build_tiny_llama
from exp3rt.student.ratings import RatingTokens

SENTENCES = (
    "The acting was great but the plot was slow.",
    "I liked the soundtrack and the camera work.",
    "The ending felt rushed and the dialogue was flat.",
    "Good value, the battery lasts long.",
)
PRESETS = {
    "tiny": {"hidden": 256, "layers": 4, "heads": 4},
    "student": {
        "hidden": 64,
        "layers": 2,
        "heads": 4,
    },  # the shape conf/student/tiny.yaml trains (demo, tests)
    "smollm2": {"hidden": 576, "layers": 30, "heads": 9},
}


def prompts(tok, n: int) -> list[str]:
    out = []
    for i in range(n):
        body = " ".join(
            SENTENCES[(i + k) % len(SENTENCES)] for k in range(3 + (i * 5) % 17)
        )  # 3..19 sentences
        out.append(
            tok.apply_chat_template(
                [{"role": "user", "content": f"User profile: {body}\nRate the item."}],
                add_generation_prompt=True,
                tokenize=False,
            )
        )
    return out


def timed(fn, *args, **kwargs):
    """(wall seconds, process CPU seconds, value)."""
    w, c = time.perf_counter(), time.process_time()
    value = fn(*args, **kwargs)
    return time.perf_counter() - w, time.process_time() - c, value


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def load_model(args) -> tuple:
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(args.model)
        return model, tok, args.model
    shape = {
        **PRESETS[args.preset],
        **{
            k: v
            for k, v in (("hidden", args.hidden), ("layers", args.layers), ("heads", args.heads))
            if v is not None
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_llama(tmp, vocab="bpe", **shape)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        tok = AutoTokenizer.from_pretrained(path)
    return (
        model,
        tok,
        f"{args.preset}: hidden {shape['hidden']} x {shape['layers']} layers, {shape['heads']} heads",
    )


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="student")
    ap.add_argument("--model", default=None, help="a model folder instead of a random preset")
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--heads", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model, tok, label = load_model(args)
    ps = prompts(tok, args.prompts)
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in ps]
    n_new, b = args.new_tokens, len(ps)

    generate_batch(model, tok, ps[:2], 4, batch_size=2)  # warm-up
    generate_batch(model, tok, ps[:1], 4, batch_size=1)

    def plain(n):  # the batch as before: one left-padded prompt pass, a cache that concatenates every step
        slack, make = generation.PREFILL_SLACK, generation.new_cache
        generation.PREFILL_SLACK, generation.new_cache = float("inf"), lambda model, reserve=0: make(model)
        try:
            return generate_batch(model, tok, ps, n, batch_size=b)
        finally:
            generation.PREFILL_SLACK, generation.new_cache = slack, make

    arms = {
        "single": lambda n: generate_batch(model, tok, ps, n, batch_size=1),
        "batched": lambda n: generate_batch(model, tok, ps, n, batch_size=b, keep_state=n == n_new),
        "plain": plain,
    }
    wall: dict[str, list] = {k: [] for k in ("single", "batched", "plain", "single_1", "batched_1")}
    cpu: dict[str, list] = {k: [] for k in wall}
    identical, t_gen, t_read5, t_read10, t_reencode = [], [], [], [], []
    t_fix_old, t_fix_new, fix_diff = [], [], []
    r5, r10 = RatingTokens(1, 5), RatingTokens(1, 10)
    for rep in range(args.repeats):
        order = ["single", "batched", "plain"] if rep % 2 == 0 else ["plain", "batched", "single"]
        outs = {}
        for arm in order:
            w, c, outs[arm] = timed(arms[arm], n_new)
            wall[arm].append(w)
            cpu[arm].append(c)
        for arm in (
            ("single", "batched") if rep % 2 == 0 else ("batched", "single")
        ):  # each arm's prompt pass (one new token)
            w, c, _ = timed(arms[arm], 1)
            wall[f"{arm}_1"].append(w)
            cpu[f"{arm}_1"].append(c)
        gens, single = outs["batched"], outs["single"]
        identical.append(
            sum(
                g.new_token_ids == s.new_token_ids == p.new_token_ids
                for g, s, p in zip(gens, single, outs["plain"], strict=True)
            )
        )
        if not args.model:  # random-init presets: batched greedy must equal one-by-one exactly
            assert identical[-1] == b, "batched != one-by-one"
        t_gen.append(wall["batched"][-1])
        t_read5.append(timed(read_after, model, tok, gens, r5)[0])
        t_read10.append(timed(read_after, model, tok, gens, r10)[0])
        full = [p + g.text + "\n" for p, g in zip(ps, gens, strict=True)]
        t_reencode.append(timed(readout_only, model, tok, full, r5, batch_size=b)[0])
        # the calculator (eval.compute_estimate) changes a reasoning's last number: the cache continued
        # over the unchanged tokens against the whole prompt + rewritten reasoning encoded again
        apply_rewrite(tok, gens, lambda text: text.rsplit(" ", 1)[0] + " 4.0")
        after = [p + g.text + "\n" for p, g in zip(ps, gens, strict=True)]
        w_old, _, old = timed(readout_only, model, tok, after, r5, batch_size=b)
        w_new, _, new = timed(read_after, model, tok, gens, r5)
        t_fix_old.append(w_old)
        t_fix_new.append(w_new)
        pairs = zip(old, new, strict=True)
        fix_diff.append(max(abs(a - c) for o, n in pairs for a, c in zip(o.probs, n.probs, strict=True)))
        del gens, outs

    def ratios(times, end_to_end: bool) -> list[float]:
        if end_to_end:
            return [s / t for s, t in zip(times["single"], times["batched"], strict=True)]
        return [
            (s - s1) / max(t - t1, 1e-9)
            for s, t, s1, t1 in zip(
                times["single"], times["batched"], times["single_1"], times["batched_1"], strict=True
            )
        ]

    med = statistics.median
    total = n_new * b
    computed = sum(len(g) * max(lengths[i] for i in g) for g in length_groups(lengths))
    res = {
        "model": {"name": label, "params": sum(p.numel() for p in model.parameters())},
        "torch_threads": torch.get_num_threads(),
        "prompts": b,
        "prompt_tokens": {
            "min": min(lengths),
            "max": max(lengths),
            "sum": sum(lengths),
            "padded": b * max(lengths),
            "computed": computed,
        },
        "new_tokens": n_new,
        "repeats": args.repeats,
        "batched_over_single": spread(ratios(wall, True)),  # end to end, wall clock (the goal's measure)
        "batched_over_single_cpu": spread(ratios(cpu, True)),
        # the batch now (length-grouped prompt pass, in-place KV cache) against the batch as it was, same run
        "plain_over_batched": spread([p / t for p, t in zip(wall["plain"], wall["batched"], strict=True)]),
        "decode_batched_over_single": spread(ratios(wall, False)),
        "decode_batched_over_single_cpu": spread(ratios(cpu, False)),
        "batched_tokens_per_s": total / med(wall["batched"]),
        "single_tokens_per_s": total / med(wall["single"]),
        "single_step_ms": 1000
        * med([s - s1 for s, s1 in zip(wall["single"], wall["single_1"], strict=True)])
        / (b * (n_new - 1)),
        "batched_step_ms": 1000
        * med([t - t1 for t, t1 in zip(wall["batched"], wall["batched_1"], strict=True)])
        / (n_new - 1),
        "prompt_pass_s": {"single": med(wall["single_1"]), "batched": med(wall["batched_1"])},
        "identical_rows": min(identical),
        "reasoning_gen_s": med(t_gen),
        "readout_s_1to5": med(t_read5),
        "readout_s_1to10": med(t_read10),
        "readout_over_gen_1to5": med(t_read5) / med(t_gen),
        "readout_over_gen_1to10": med(t_read10) / med(t_gen),
        "reencode_readout_over_gen_1to5": med(t_reencode) / med(t_gen),
        "rewrite_reencode_over_cached": spread([o / n for o, n in zip(t_fix_old, t_fix_new, strict=True)]),
        "rewrite_cached_s": med(t_fix_new),
        "rewrite_max_prob_diff": max(fix_diff),
        "goals": {"batched_over_single": ">= 4", "readout_over_gen": "<= 0.10"},
    }
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        e2e, e2e_cpu = res["batched_over_single"], res["batched_over_single_cpu"]
        dec, dec_cpu = res["decode_batched_over_single"], res["decode_batched_over_single_cpu"]
        print(
            f"{label} ({res['model']['params'] / 1e6:.1f} M params), {res['torch_threads']} torch thread(s); "
            f"{b} prompts of {min(lengths)}-{max(lengths)} tokens, {n_new} new tokens each; "
            f"{args.repeats} repeats, arms interleaved"
        )
        print(
            f"batched / one-by-one, end to end: {e2e['median']:.2f}x wall (range "
            f"{e2e['min']:.2f}-{e2e['max']:.2f}), "
            f"{e2e_cpu['median']:.2f}x CPU (range {e2e_cpu['min']:.2f}-{e2e_cpu['max']:.2f})   goal >= 4"
        )
        print(
            f"batched / one-by-one, decoding:   {dec['median']:.2f}x wall (range "
            f"{dec['min']:.2f}-{dec['max']:.2f}), "
            f"{dec_cpu['median']:.2f}x CPU (range {dec_cpu['min']:.2f}-{dec_cpu['max']:.2f})"
        )
        print(
            f"  tokens/s batched {res['batched_tokens_per_s']:.0f}, one-by-one "
            f"{res['single_tokens_per_s']:.0f}; decode step "
            f"{res['single_step_ms']:.1f} ms one-by-one, {res['batched_step_ms']:.1f} ms for the batch "
            f"of {b}; prompt pass "
            f"{res['prompt_pass_s']['single']:.2f} s one-by-one, {res['prompt_pass_s']['batched']:.2f} "
            "s batched "
            f"({res['prompt_tokens']['computed']} positions computed for {res['prompt_tokens']['sum']} "
            "tokens; "
            f"{res['prompt_tokens']['padded']} as one padded batch)"
        )
        pl = res["plain_over_batched"]
        print(
            f"batch of {b} as before (one padded prompt pass, concatenating KV cache) / now: "
            f"{pl['median']:.2f}x wall "
            f"(range {pl['min']:.2f}-{pl['max']:.2f})"
        )
        print(
            f"readout / generation: {res['readout_over_gen_1to5']:.4f} (1-5), "
            f"{res['readout_over_gen_1to10']:.4f} (1-10)   goal <= 0.10; "
            f"re-encoding instead: {res['reencode_readout_over_gen_1to5']:.3f}"
        )
        fx = res["rewrite_reencode_over_cached"]
        print(
            "after a rewrite of the last number (eval.compute_estimate): re-encoding / continuing the cache "
            f"{fx['median']:.2f}x wall (range {fx['min']:.2f}-{fx['max']:.2f}); the readouts differ by at "
            f"most {res['rewrite_max_prob_diff']:.1e} in probability"
        )
    return res


if __name__ == "__main__":
    main()
