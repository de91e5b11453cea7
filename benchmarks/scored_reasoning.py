"""Where a student trained on the scored rationale (``prompt=exp3rt_scored``) goes wrong: in the lists it
names, or in the estimate it computes from them. Reads an evaluation's predictions.jsonl (the reasoning the
student generated for each test pair and its expected rating) and prints, over the pairs whose reasoning
ends with an estimate:

* how often the student's estimate equals the teacher's rule applied to the student's *own* lists and user
  average (``teacher.backends.extractive.estimate``): its arithmetic;
* the RMSE against the true rating of the student's estimate, of the rule applied to its own lists (what
  the same reasoning gives with the arithmetic done right) and of its expected rating (``student_expected``);
* the correlation of the expected rating with the student's estimate and with the user's average.

    python benchmarks/scored_reasoning.py <artifacts>/evaluations/<run> [--scale 1 5] [--domain movie]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exp3rt.teacher.backends.extractive import estimate, read_scored  # noqa: E402


def parse(reasoning: str, domain: str) -> tuple[list[int], list[float], float] | None:
    """(counts of the three lists the estimate uses, averages user first, the estimate), or None."""
    return read_scored(reasoning, domain)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("evaluation", type=Path, help="an evaluation directory (with predictions.jsonl)")
    ap.add_argument("--scale", type=float, nargs=2, default=(1.0, 5.0), help="the dataset's rating scale")
    ap.add_argument("--domain", default="movie", help="the dataset's domain word (dataset.domain)")
    args = ap.parse_args()
    rows = [json.loads(line) for line in (args.evaluation / "predictions.jsonl").read_text().splitlines()]
    said, ruled, readout, truth, user = [], [], [], [], []
    for row in rows:
        got = parse(row.get("reasoning") or "", args.domain)
        if got is None or row.get("rating_expected") is None:
            continue
        counts, averages, value = got
        said.append(value)
        ruled.append(estimate(*counts, averages, tuple(args.scale)))
        readout.append(float(row["rating_expected"]))
        truth.append(float(row["truth"]))
        user.append(averages[0] if averages else np.nan)
    if not said:
        sys.exit(
            f"{args.evaluation}: no reasoning ends with an estimate "
            "(a student trained with prompt=exp3rt_scored "
            "writes one)"
        )
    said, ruled, readout, truth, user = map(np.array, (said, ruled, readout, truth, user))

    def rmse(x):
        return float(np.sqrt(np.mean((x - truth) ** 2)))

    def corr(x, y):
        ok = ~np.isnan(x) & ~np.isnan(y)
        return float(np.corrcoef(x[ok], y[ok])[0, 1])

    print(f"{args.evaluation}: {len(said)} of {len(rows)} reasonings end with an estimate\n")
    print("| | value |\n|---|---|")
    print(f"| estimate = the rule on its own lists (arithmetic right) | {np.mean(said == ruled):.3f} |")
    print(f"| RMSE: the student's estimate | {rmse(said):.4f} |")
    print(f"| RMSE: the rule on the student's own lists | {rmse(ruled):.4f} |")
    print(f"| RMSE: the expected rating (student_expected) | {rmse(readout):.4f} |")
    print(f"| correlation: expected rating · its estimate | {corr(readout, said):.3f} |")
    print(f"| correlation: expected rating · the user's average | {corr(readout, user):.3f} |")


if __name__ == "__main__":
    main()
