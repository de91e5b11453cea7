"""Ingest benchmark: N Amazon-2018-format reviews → canonical parquet + a seeded split.

Generates the review file (with the real files' quirks: reviews repeated across product variants,
vote strings with thousands separators, optional fields), then runs ``prepare_dataset`` and
``prepare_split`` in a fresh child process so its peak RSS is the ingest's alone.

    python benchmarks/bench_ingest.py                 # 1,000,000 reviews (goal: <= 60 s, <= 2 GB RSS)
    python benchmarks/bench_ingest.py --n 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

WORDS = (
    "great magazine articles issue subscription price delivery late cover photos recipes reading "
    "interesting boring ads too many pages quality paper writing informative editorial monthly "
    "worth value renew cancel gift favorite love hate content stories tips layout fashion news"
).split()


def generate(path: Path, n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    # Amazon-like sizes: ~10 reviews per user, a long-tailed item popularity (p ~ 1 / rank^0.9)
    n_users, n_items = max(n // 10, 10), max(n // 25, 10)
    users = rng.integers(0, n_users, size=n)
    weights = 1.0 / np.arange(1, n_items + 1) ** 0.9
    items = rng.choice(n_items, size=n, p=weights / weights.sum())
    ratings = rng.choice([1.0, 2.0, 3.0, 4.0, 5.0], p=[0.06, 0.05, 0.1, 0.2, 0.59], size=n)
    lengths = rng.integers(8, 120, size=n)
    word_ids = rng.integers(0, len(WORDS), size=int(lengths.sum()))
    t0 = 1_300_000_000
    offset = 0
    variants = 0
    with open(path, "wb") as f:
        for k in range(n):
            text = " ".join(WORDS[j] for j in word_ids[offset : offset + lengths[k]])
            offset += lengths[k]
            rec = {
                "overall": float(ratings[k]),
                "verified": bool(k % 3),
                "reviewTime": "01 1, 2015",
                "reviewerID": f"A{users[k]:09d}",
                "asin": f"B{items[k]:09d}",
                "reviewerName": "Reader",
                "reviewText": text,
                "summary": text[:30],
                "unixReviewTime": t0 + k * 37,
            }
            if k % 7 == 0:
                rec["vote"] = f"{(k % 3000):,}"
            if k % 4 == 0:
                rec["style"] = {"Format:": " Print Magazine"}
            line = orjson.dumps(rec)
            f.write(line + b"\n")
            if k % 50 == 0:  # the 5-core quirk: the same review under a sibling variant's asin
                rec["asin"] = f"B{(items[k] + 1) % n_items:09d}"
                f.write(orjson.dumps(rec) + b"\n")
                variants += 1
    return {"lines": n + variants, "variant_copies": variants}


def child(review_path: str, data_root: str) -> None:
    from omegaconf import OmegaConf

    from exp3rt.config import validate
    from exp3rt.data.prepare import prepare_dataset
    from exp3rt.data.splits import prepare_split

    cfg = validate(
        OmegaConf.create(
            {
                "dataset": {
                    "name": "bench",
                    "loader": "amazon2018",
                    "path": review_path,
                    "domain": "product",
                },
                "split": {"strategy": "per_user", "seed": 1, "test_ratio": 0.2, "valid_ratio": 0.1},
            }
        )
    )
    t0 = time.perf_counter()
    prepared = prepare_dataset(cfg.dataset, data_root)
    t1 = time.perf_counter()
    rss_after_ingest = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    split = prepare_split(prepared, cfg.split)
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "ingest_s": t1 - t0,
                "split_s": t2 - t1,
                "interactions": len(prepared.dataset.interactions),
                "split_counts": {k: int(v) for k, v in split.meta["stats"]["counts"].items()},
                "notes": prepared.report.get("notes"),
                "peak_rss_bytes": peak,
                "peak_rss_ingest_bytes": rss_after_ingest,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        review_path = Path(tmp) / "reviews.json"
        t0 = time.perf_counter()
        gen = generate(review_path, args.n)
        gen_s = time.perf_counter() - t0
        size_mb = review_path.stat().st_size / 1e6
        print(
            f"generated {gen['lines']:,} lines ({size_mb:.0f} MB, {gen['variant_copies']:,} variant "
            f"copies) in {gen_s:.1f} s"
        )
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(review_path), str(Path(tmp) / "data")],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        wall = time.perf_counter() - t0
        res = json.loads(out.stdout.strip().splitlines()[-1])
    gb = res["peak_rss_bytes"] / 2**30
    total = res["ingest_s"] + res["split_s"]
    print(f"interactions after variant dedupe: {res['interactions']:,}; split {res['split_counts']}")
    print(
        f"ingest → canonical parquet: {res['ingest_s']:.1f} s ({gen['lines'] / res['ingest_s']:,.0f} lines/s)"
    )
    print(f"split (per_user 70/10/20) → parquet: {res['split_s']:.1f} s")
    print(
        f"ingest + split: {total:.1f} s (goal <= 60 s: {total / 60:.2f} of budget); child wall "
        f"{wall:.1f} s incl. imports"
    )
    print(
        f"peak RSS: {gb:.2f} GiB (goal <= 2 GiB: {gb / 2:.2f} of budget); "
        f"during ingest alone {res['peak_rss_ingest_bytes'] / 2**30:.2f} GiB"
    )


if __name__ == "__main__":
    main()
