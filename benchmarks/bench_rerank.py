"""Reranking cost on CPU: scoring N candidates of one user ÷ scoring one, with and without prefix reuse.

A tiny random Llama (``build_tiny_llama``, bpe vocabulary, default hidden 256 x 4 layers) scores rating
prompts built from the project's prompt file (``conf/student_prompt/exp3rt_v1.yaml``): a shared part
(system message + user profile, about ``--user-tokens`` tokens) and a per-candidate part (item
description + item profile + instruction, about ``--item-tokens`` tokens). Fast mode (the readout after
``Predicted User Rating: ``), ratings 1-5.

* **reuse**: :func:`score_candidates` as shipped — the common prefix runs once, the suffixes as one batch;
* **no reuse**: ``reuse_prefix=False`` — every prompt whole, in one right-padded batch.

For each arm: the median time to score 1 candidate and N candidates (arms and sizes interleaved, after a
warm-up), and the ratio t(N)/t(1) (goal with reuse: <= 10 for N=20; without reuse it grows about as N).

    python benchmarks/bench_rerank.py                    # ~30 s; 300-token user part, ~80-token item part
    python benchmarks/bench_rerank.py --layout prompt_file   # the exp3rt_v1 rating prompt (longer item part)
    python benchmarks/bench_rerank.py --repeats 3 --json
    python benchmarks/bench_rerank.py --mode full        # reasoning (48 tokens) then readout per candidate;
                                                         # + 4 users together vs one user at a time
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
import warnings

import torch


def make_prompts(
    tokenizer, ratings, n: int, user_tokens: int, item_tokens: int, layout: str = "plain"
) -> list[tuple[str, str]]:
    """``n`` rating prompts of one user whose shared part and item parts are at least the requested lengths
    (tokens; the item part is everything after the shared prefix, rating prefix excluded).

    ``layout="plain"``: system + user message "User profile ... / Movie j: ..." through the chat template;
    ``layout="prompt_file"``: the rating prompt of ``exp3rt_v1.yaml`` (its item part also holds the section
    headers and the instruction, about 100 tokens with this tiny vocabulary)."""
    from exp3rt.student.prompts import StudentPrompts, load_student_prompt
    from exp3rt.student.tokenize import render_prompt

    prompts = StudentPrompts(load_student_prompt("exp3rt_v1"), "movie", ratings)
    likes = [
        "tense plots",
        "strong acting",
        "clever dialogue",
        "a moving score",
        "practical effects",
        "long takes",
        "morally grey heroes",
        "quiet endings",
        "period detail",
        "ensemble casts",
    ]
    dislikes = [
        "slow pacing",
        "cheap jump scares",
        "flat villains",
        "shaky camera work",
        "loud mixing",
        "plot holes",
    ]

    def profile(words: int) -> str:
        lines, i = [], 0
        while sum(len(x.split()) for x in lines) < words:
            lines.append(f"- Enjoys {likes[i % len(likes)]} when the story earns it ({i}).")
            i += 1
        return "[Like]\n" + "\n".join(lines) + "\n[Dislike]\n" + "\n".join(f"- {d}." for d in dislikes)

    def item(j: int, words: int) -> dict:
        text = " ".join(likes[(j + w) % len(likes)] for w in range(words))
        return {
            "item_description": f"Movie {j}: {text}.",
            "item_profile": f"[Like]\n- {likes[j % len(likes)]}.\n[Dislike]\n"
            f"- {dislikes[j % len(dislikes)]}.",
        }

    def build(words_user: int, words_item: int) -> list[tuple[str, str]]:
        out = []
        for j in range(n):
            sections = {"user_profile": profile(words_user), **item(j, words_item)}
            if layout == "prompt_file":
                system, user = prompts.rating_messages(sections, reasoning=False)
                text = user.text
            else:
                system = (
                    "You predict how a user will rate a movie from the user's profile and the "
                    "movie's description."
                )
                text = f"User profile:\n{sections['user_profile']}\n\n{sections['item_description']}"
            out.append((f"item{j}", render_prompt(tokenizer, system, text)))
        return out

    # grow the two parts until their token counts reach the targets
    from exp3rt.inference.rerank import _encode, common_prefix_len

    wu, wi = 20, 2
    for _ in range(200):
        cands = build(wu, wi)
        seqs = [_encode(tokenizer, p) for _, p in cands]
        shared = common_prefix_len(seqs)
        per_item = statistics.mean(len(s) - shared for s in seqs)
        if shared >= user_tokens and per_item >= item_tokens:
            return cands
        wu += 4 if shared < user_tokens else 0
        wi += 1 if per_item < item_tokens else 0
    return cands


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument("--user-tokens", type=int, default=300)
    ap.add_argument("--item-tokens", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--layout", choices=("plain", "prompt_file"), default="plain")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch's default; on a shared 2-core box 2 threads oversubscribe badly)",
    )
    ap.add_argument(
        "--mode",
        choices=("fast", "full"),
        default="fast",
        help="full: each candidate's reasoning (--new-tokens, greedy, the user's candidates as one "
        "batch) then the readout",
    )
    ap.add_argument("--new-tokens", type=int, default=48, help="reasoning tokens per candidate in full mode")
    ap.add_argument(
        "--users",
        type=int,
        default=4,
        help="full mode: also time this many users' candidates reasoning together vs one user at a time",
    )
    ap.add_argument("--batch-size", type=int, default=40, help="full mode, users together: prompts per batch")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)
    model, tok, ratings, cands = setup(args)
    if args.mode == "full":
        return main_full(args, model, tok, ratings, cands)

    from exp3rt.inference.rerank import _encode, common_prefix_len, score_candidates
    from exp3rt.student.ratings import RATING_PREFIX

    n = args.candidates
    seqs = [_encode(tok, p + RATING_PREFIX) for _, p in cands]
    shared = common_prefix_len(seqs)
    per_item = statistics.mean(len(s) - shared for s in seqs)

    def run(size: int, reuse: bool) -> float:
        t0 = time.perf_counter()
        score_candidates(
            model, tok, {"u": cands[:size]}, ratings, RATING_PREFIX, batch_size=n, reuse_prefix=reuse
        )
        return time.perf_counter() - t0

    arms = [(size, reuse) for reuse in (True, False) for size in (1, n)]
    for _ in range(args.warmup):
        for a in arms:
            run(*a)
    times: dict = {a: [] for a in arms}
    for _ in range(args.repeats):
        for a in arms:
            times[a].append(run(*a))
    med = {a: statistics.median(v) for a, v in times.items()}
    result = {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "hidden": args.hidden,
        "layers": args.layers,
        "candidates": n,
        "layout": args.layout,
        "shared_tokens": shared,
        "item_tokens_mean": round(per_item, 1),
        "repeats": args.repeats,
        "reuse": {
            "t1_ms": med[(1, True)] * 1e3,
            f"t{n}_ms": med[(n, True)] * 1e3,
            "ratio": med[(n, True)] / med[(1, True)],
        },
        "no_reuse": {
            "t1_ms": med[(1, False)] * 1e3,
            f"t{n}_ms": med[(n, False)] * 1e3,
            "ratio": med[(n, False)] / med[(1, False)],
        },
    }
    result["speedup_at_n"] = med[(n, False)] / med[(n, True)]
    result["goal_ratio_le_10"] = result["reuse"]["ratio"] <= 10
    if args.json:
        print(json.dumps(result, indent=2))
        return result
    print(
        f"tiny Llama hidden {args.hidden} x {args.layers} layers, CPU {result['threads']} threads; "
        f"shared prefix {shared} tokens, item part {per_item:.0f} tokens (mean), {args.layout} layout, "
        f"fast mode, median of {args.repeats}"
    )
    print(f"{'arm':<10} {'t(1) ms':>10} {f't({n}) ms':>10} {f't({n})/t(1)':>12}")
    for name in ("reuse", "no_reuse"):
        r = result[name]
        print(f"{name:<10} {r['t1_ms']:>10.1f} {r[f't{n}_ms']:>10.1f} {r['ratio']:>12.2f}")
    print(
        f"reuse vs no reuse at {n} candidates: {result['speedup_at_n']:.2f}x faster; goal t({n})/t(1) "
        "<= 10 with reuse: "
        f"{'met' if result['goal_ratio_le_10'] else 'NOT met'}"
    )
    return result


def setup(args):
    """Quiet logs, torch threads, the tiny model and tokenizer, ratings 1-5 and one user's candidates."""
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from exp3rt.models.tiny import build_tiny_llama
    from exp3rt.student.ratings import RatingTokens

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_llama(f"{tmp}/llama", vocab="bpe", hidden=args.hidden, layers=args.layers)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(folder)
    ratings = RatingTokens(1, 5)
    return (
        model,
        tok,
        ratings,
        make_prompts(tok, ratings, args.candidates, args.user_tokens, args.item_tokens, args.layout),
    )


def main_full(args, model, tok, ratings, cands) -> dict:
    """Full mode: t(N)/t(1) for a user's N candidates reasoning as one batch (there is no no-reuse arm: the
    reasoning batch shares no prefix cache)."""
    from exp3rt.inference.rerank import score_candidates
    from exp3rt.student.ratings import RATING_PREFIX

    n = args.candidates

    finish: dict = {}

    def run(size: int) -> float:
        stats: dict = {}
        t0 = time.perf_counter()
        score_candidates(
            model,
            tok,
            {"u": cands[:size]},
            ratings,
            RATING_PREFIX,
            mode="full",
            max_new_tokens=args.new_tokens,
            batch_size=n,
            stats=stats,
        )
        dt = time.perf_counter() - t0
        finish[size] = sorted(stats["u"]["finish"].values())  # how each reasoning ended (length = all tokens)
        return dt

    for _ in range(args.warmup):
        run(1), run(n)
    times: dict = {1: [], n: []}
    for _ in range(args.repeats):
        for size in (1, n):
            times[size].append(run(size))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "hidden": args.hidden,
        "layers": args.layers,
        "candidates": n,
        "mode": "full",
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "t1_ms": med[1] * 1e3,
        f"t{n}_ms": med[n] * 1e3,
        "ratio": med[n] / med[1],
        "finish": {str(k): {r: v.count(r) for r in set(v)} for k, v in finish.items()},
    }
    result["goal_ratio_le_10"] = result["ratio"] <= 10
    if (
        args.users > 1
    ):  # time per user: all users' candidates in batches of --batch-size vs one user (N rows) at a time
        users = {f"u{k}": cands for k in range(args.users)}

        def together() -> float:
            t0 = time.perf_counter()
            score_candidates(
                model,
                tok,
                users,
                ratings,
                RATING_PREFIX,
                mode="full",
                max_new_tokens=args.new_tokens,
                batch_size=args.batch_size,
            )
            return (time.perf_counter() - t0) / len(users)

        def apart() -> float:
            t0 = time.perf_counter()
            for user, c in users.items():
                score_candidates(
                    model,
                    tok,
                    {user: c},
                    ratings,
                    RATING_PREFIX,
                    mode="full",
                    max_new_tokens=args.new_tokens,
                    batch_size=n,
                )
            return (time.perf_counter() - t0) / len(users)

        per_user: dict = {"together": [], "apart": []}
        for rep in range(args.repeats):
            for name in ("together", "apart") if rep % 2 == 0 else ("apart", "together"):
                per_user[name].append((together if name == "together" else apart)())
        result["users"] = {
            "n": args.users,
            "batch_size": args.batch_size,
            "together_s_per_user": statistics.median(per_user["together"]),
            "apart_s_per_user": statistics.median(per_user["apart"]),
        }
        result["users"]["apart_over_together"] = (
            result["users"]["apart_s_per_user"] / result["users"]["together_s_per_user"]
        )
    if args.json:
        print(json.dumps(result, indent=2))
        return result
    print(
        f"tiny Llama hidden {args.hidden} x {args.layers} layers, CPU {result['threads']} threads; "
        "full mode, "
        f"{args.new_tokens} reasoning tokens per candidate, median of {args.repeats}"
    )
    print(
        f"t(1) {result['t1_ms']:.0f} ms, t({n}) {result[f't{n}_ms']:.0f} ms, t({n})/t(1) "
        f"{result['ratio']:.2f} "
        f"(goal <= 10: {'met' if result['goal_ratio_le_10'] else 'NOT met'}); reasonings ended: "
        f"{result['finish']}"
    )
    if "users" in result:
        u = result["users"]
        print(
            f"{u['n']} users x {n} candidates: {u['together_s_per_user']:.2f} s per user reasoning together "
            f"(batches of {u['batch_size']}), {u['apart_s_per_user']:.2f} s one user at a time: "
            f"{u['apart_over_together']:.2f}x"
        )
    return result


if __name__ == "__main__":
    main()
