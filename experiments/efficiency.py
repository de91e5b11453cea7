#!/usr/bin/env python
"""Efficiency (the paper's cost argument): reranking a retriever's top-20 vs scoring every unseen item,
as time per test user (the paper: 7.31 s vs 422 s per user). Two runs that differ only in
eval.num_candidates; the first stage keeps ALL candidates (baselines.retrieval.num_candidates) so the
top-20 run reranks the first 20 of the same list. ALL (default 1000) is more than the demo world's
150 items, so that run scores every unseen item; on a real dataset pass --all-items with its item count.

    python experiments/efficiency.py                                 # CPU demo (synthetic world)
    python experiments/efficiency.py --all-items 50000 --preset paper experiment=paper_imdb \\
        eval.rerank_max_users=100
"""

import os
import sys
from pathlib import Path

from exp3rt.recipes import Recipe, runs_view

PAPER = {"top20_seconds_per_user": 7.31, "all_seconds_per_user": 422.0}
ALL = int(os.environ.get("EXP3RT_ALL_ITEMS", "1000"))
COLUMNS = [
    ("candidates", "rerank/num_candidates"),
    ("s / user", "rerank/seconds_per_user"),
    ("users", "rerank/users"),
    ("nDCG@10 first stage", "rerank/before/ndcg@10"),
    ("nDCG@10 reranked", "rerank/after/ndcg@10"),
    ("s / rating pair", "efficiency/eval_seconds_per_pair"),
]


def sweep(preset, extra):
    return [
        "eval.rerank=true",
        f"baselines.retrieval.num_candidates={ALL}",
        f"eval.num_candidates=20,{ALL}",
    ], []


def view(cmp):
    ok = [r for r in cmp.runs if r.ok and r.value("rerank/seconds_per_user") is not None]
    for r in cmp.runs:
        n = r.value("rerank/num_candidates")
        r.label = (
            (f"top-{n:g}" if n is not None and n <= 20 else "all unseen items") if n is not None else r.label
        )
    lines, data = [], {"paper": PAPER}
    paper_ratio = PAPER["all_seconds_per_user"] / PAPER["top20_seconds_per_user"]
    if len(ok) >= 2:
        small = min(ok, key=lambda r: r.value("rerank/num_candidates"))
        large = max(ok, key=lambda r: r.value("rerank/num_candidates"))
        ratio = large.value("rerank/seconds_per_user") / max(small.value("rerank/seconds_per_user"), 1e-12)
        data["seconds_per_user_ratio"] = ratio
        lines.append(
            f"Scoring all unseen items takes {ratio:.1f}× the time per user of reranking the top-20 "
            f"({large.value('rerank/seconds_per_user'):.3f} s vs "
            f"{small.value('rerank/seconds_per_user'):.3f} s); "
            f"the paper: {PAPER['all_seconds_per_user']:g} s vs {PAPER['top20_seconds_per_user']:g} s "
            f"= {paper_ratio:.1f}×."
        )
        modes = sorted({str(r.info.get("rerank_mode")) for r in ok})
        lines.append(
            f"Rerank mode: {', '.join(modes)} (fast: the rating readout only, each user's prompt "
            "prefix run once; "
            "full: reasoning generated per candidate — eval.rerank_mode=full)."
        )
    else:
        lines.append("Need both runs (top-20 and all items) with reranking to give the time ratio.")
    table = runs_view(cmp, "Time per test user: rerank top-20 vs score all items", COLUMNS, lines)
    table.data.update(data)
    return table


RECIPE = Recipe(
    name="efficiency",
    title="Efficiency: reranking the top-20 vs scoring every item",
    sweep=sweep,
    metrics=[
        "rerank/num_candidates",
        "rerank/seconds_per_user",
        "rerank/after/ndcg@10",
        "efficiency/train_seconds",
    ],
    by=["eval.num_candidates"],
    view=view,
    results_root=Path(__file__).resolve().parent / "results",
)

if __name__ == "__main__":
    import argparse

    pre = argparse.ArgumentParser(add_help=False)  # the one option of this recipe; the rest is the shared CLI
    pre.add_argument(
        "--all-items", type=int, default=ALL, help="candidates for the 'all items' run (default 1000)"
    )
    known, rest = pre.parse_known_args()
    ALL = known.all_items
    sys.exit(RECIPE.main(rest))
