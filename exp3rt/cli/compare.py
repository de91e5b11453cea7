"""``exp3rt-compare``: one table over many runs.

    exp3rt-compare multirun/pipeline/2026-01-01_12-00-00            # a multirun: one row per job
    exp3rt-compare outputs/pipeline/run_a outputs/pipeline/run_b    # any run dirs (pipeline, evaluate,
                                                                    # baselines)
    exp3rt-compare multirun/pipeline/<time> --metrics 'rating/student_expected/rmse,rerank/after/*@10' \\
        --by ablation
    exp3rt-compare --wandb my-team/exp3rt --group ablations         # the same table from W&B (online)

Writes ``compare.md``, ``compare.json`` and ``compare.png`` into ``--out`` (default: the multirun dir
when one was given, else the current directory). Exit status 1 when some run failed or never started
(the table is still written), 2 when nothing could be read.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from exp3rt.compare import collect_runs, compare, default_out_dir, wandb_runs, write_outputs

log = logging.getLogger("exp3rt.compare")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="exp3rt-compare",
        description="Compare exp3rt runs: one markdown table, compare.json and a PNG.",
        epilog="Metric names are the flat names of metrics.json (its 'flat' key): rating/<model>/<key>, "
        "rerank/<before|after>/<metric>, retrieval/<model>/<metric>, efficiency/<key>, plus "
        "rating/best_baseline/<key>.",
    )
    p.add_argument(
        "paths", nargs="*", help="a multirun dir, run dirs, or folders of them (searched for metrics.json)"
    )
    p.add_argument(
        "--metrics",
        help="comma-separated flat metric names or glob patterns (default: student RMSE/MAE, "
        "parse rate, global-mean and best baseline RMSE, rerank nDCG@10 before/after)",
    )
    p.add_argument(
        "--by",
        help="comma-separated keys to label runs by (a group like ablation, an override key, or a "
        "dotted config key); default: whatever differs between the runs",
    )
    p.add_argument(
        "--out", type=Path, help="where compare.md/.json/.png go (default: the multirun dir, else the cwd)"
    )
    p.add_argument("--plot", type=Path, help="the PNG path (default: <out>/compare.png)")
    p.add_argument("--title", help="the heading of compare.md and the plot")
    p.add_argument(
        "--wandb", metavar="ENTITY/PROJECT", help="read runs from W&B (online) instead of directories"
    )
    p.add_argument("--group", help="with --wandb: only runs of this W&B group (experiment_name)")
    return p


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def main(argv: list[str] | None = None, api: Any = None) -> int:
    """``api``: a ``wandb.Api``-like object for ``--wandb`` (tests inject a double; None makes a real one)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parser().parse_args(argv)
    if bool(args.paths) == bool(args.wandb):
        parser().error("give run directories or --wandb ENTITY/PROJECT (one of the two)")
    if args.group and not args.wandb:
        parser().error("--group selects W&B runs; it needs --wandb")
    try:
        if args.wandb:
            runs = wandb_runs(args.wandb, group=args.group, api=api)
            sources = [args.wandb + (f" (group {args.group})" if args.group else "")]
            out = args.out or Path.cwd()
        else:
            runs = collect_runs(args.paths)
            sources = [str(p) for p in args.paths]
            out = args.out or default_out_dir(args.paths)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not runs:
        print(f"error: no runs found in {', '.join(sources)}", file=sys.stderr)
        return 2
    cmp = compare(runs, metrics=_split(args.metrics), by=_split(args.by), title=args.title, sources=sources)
    paths = write_outputs(cmp, Path(out), plot=args.plot)
    print(cmp.summary_line())
    print(cmp.table())
    if cmp.failures():
        print("\n" + cmp.failures())
    for w in cmp.warnings:
        print(f"note: {w}", file=sys.stderr)
    print(f"\nwrote {paths['markdown']}, {paths['json']}, {paths['plot']}")
    return 1 if cmp.failed else 0


if __name__ == "__main__":
    sys.exit(main())
