"""The method on this CPU, as a benchmark: `experiment=method_cpu` for several training seeds, the
`ablation=no_reasoning` student at the same training budget, and the training loss in float32 against
bfloat16 over the same first steps. Prints one markdown table (every run, then mean ± spread per setting)
and writes it, the raw figures (JSON) and the loss-curve PNG into --out.

    make smollm2
    python benchmarks/method_cpu.py                            # seeds 42 1 2, the ablation, fp32 vs bf16
    python benchmarks/method_cpu.py --seeds 42 --no-precision  # one seed and its ablation
    python benchmarks/method_cpu.py --precision-steps 20 -- trainer.max_steps=40   # overrides for every run

Every run is a plain `python -m exp3rt experiment=method_cpu ...` command (printed before it starts) with
its own Hydra run directory under --out/runs, so its metrics.json, report and logs stay beside the table.
Runs share --artifacts (data, baselines, teacher annotations are made once); a finished student is reused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from exp3rt.evaluation.rerank import score_auc  # noqa: E402
from exp3rt.pipeline import flat_metrics  # noqa: E402

COLUMNS = [
    ("reasoning readout RMSE", "rating/student_expected/rmse"),
    ("rating-only readout RMSE", "rating/student_direct_expected/rmse"),
    ("biased MF RMSE", "rating/biased_mf/rmse"),
    ("reasoning − biased MF [95%]", "paired/student_expected_vs_biased_mf/rmse_diff"),
    ("global mean RMSE", "rating/global_mean/rmse"),
    ("nDCG@10 LightGCN", "rerank/before/ndcg@10"),
    ("nDCG@10 reranked", "rerank/after/ndcg@10"),
    ("nDCG@10 gain [95%]", "rerank/gain/ndcg@10"),
    ("candidate AUC, student", "rerank/auc/student"),
    ("candidate AUC, LightGCN", "rerank/auc/first_stage"),
    ("aspect precision", "reasoning/aspect_precision"),
    ("aspect recall", "reasoning/aspect_recall"),
    ("distinct reasonings", "reasoning/distinct_share"),
    ("test pairs", "rating/student_expected/n"),
]


def run(name: str, overrides: list[str], out: Path, artifacts: Path, model: str | None) -> dict:
    """One pipeline run; its flat metrics, wall time and student directory."""
    run_dir = out / "runs" / name
    cmd = [
        sys.executable,
        "-m",
        "exp3rt",
        "experiment=method_cpu",
        f"paths.artifacts_dir={artifacts}",
        f"hydra.run.dir={run_dir}",
        "progress=false",
        *([f"student.model_path={model}"] if model else []),
        *overrides,
    ]
    print("$", shlex.join(cmd), flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (run_dir).mkdir(parents=True, exist_ok=True)
    (run_dir / "stdout.txt").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        print(f"  {name}: exit {done.returncode} after {wall:.0f} s:\n    " + "\n    ".join(tail), flush=True)
        return {"name": name, "ok": False, "wall_s": wall, "metrics": {}}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    flat = flat_metrics(metrics)
    evaluation = (metrics.get("stages") or {}).get("evaluate", {}).get("dir") or run_dir
    scores = Path(evaluation) / "rerank_scores.jsonl"
    if "rerank/auc/student" not in flat and scores.is_file():  # an evaluation from before the AUC existed
        rows = [json.loads(line) for line in scores.read_text().splitlines()]
        test = [r for r in rows if r["part"] == "test"]
        flat.update({f"rerank/{k}": v for k, v in score_auc(test).items()})
    print(
        f"  {name}: {wall:.0f} s; "
        + ", ".join(f"{label} {flat[key]:.4f}" for label, key in COLUMNS[:2] if key in flat),
        flush=True,
    )
    return {"name": name, "ok": True, "wall_s": wall, "metrics": flat, "student_dir": student_dir(metrics)}


def student_dir(metrics: dict) -> str | None:
    train = (metrics.get("stages") or {}).get("train") or {}
    return train.get("dir") or None


def loss_curve(student: str | None) -> list[tuple[int, float]]:
    """(step, train/loss) from the student's CSV log."""
    if not student:
        return []
    rows = []
    for path in sorted(Path(student).glob("csv/version_*/metrics.csv")):
        lines = path.read_text().splitlines()
        head = lines[0].split(",")
        if "train/loss" not in head:
            continue
        s, lo = head.index("step"), head.index("train/loss")
        rows += [
            (int(c[s]), float(c[lo])) for c in (ln.split(",") for ln in lines[1:]) if len(c) > lo and c[lo]
        ]
    return sorted(dict(rows).items())


def fmt(x: float | None) -> str:
    return (
        "–"
        if x is None or (isinstance(x, float) and math.isnan(x))
        else (f"{x:.4f}" if abs(x) < 100 else f"{x:.0f}")
    )


def cell(metrics: dict, key: str) -> str:
    """A figure, with its paired bootstrap interval where the run has one (paired/*, rerank/gain/*)."""
    base = key.rsplit("/", 1)[0] + "/" if key.startswith("paired/") else key + "_"
    lo, hi = metrics.get(base + "ci_low"), metrics.get(base + "ci_high")
    if lo is None or hi is None:
        return fmt(metrics.get(key))
    return f"{metrics[key]:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def spread(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return fmt(mean)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.4f} ± {sd:.4f}"


def table(results: list[dict]) -> str:
    head = "| run | wall (s) | " + " | ".join(label for label, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['wall_s']:.0f} | "
            + " | ".join(cell(r["metrics"], key) for _, key in COLUMNS)
            + " |"
        )
    groups: dict[str, list[dict]] = {}
    for r in results:
        if r["ok"] and "-seed" in r["name"]:
            groups.setdefault(r["name"].split("-seed")[0], []).append(r)
    for group, rs in groups.items():
        lines.append(
            f"| **{group}, mean ± sd of {len(rs)}** | {spread([r['wall_s'] for r in rs])} | "
            + " | ".join(spread([r["metrics"].get(key) for r in rs]) for _, key in COLUMNS)
            + " |"
        )
    return "\n".join(lines)


def plot(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, points in curves.items():
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (answer tokens)")
    ax.set_yscale("log")
    ax.set_title("SmolLM2-135M on the synthetic world (experiment=method_cpu)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write(out: Path, results: list[dict], curves: dict) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    head = f"{stamp}, {os.cpu_count()} CPUs, OMP_NUM_THREADS {os.environ.get('OMP_NUM_THREADS', 'unset')}"
    (out / "table.md").write_text(f"{head}\n\n{table(results)}\n")
    (out / "results.json").write_text(
        json.dumps({"date": stamp, "results": results, "curves": curves}, indent=1)
    )
    if any(curves.values()):
        plot(curves, out / "loss.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[42, 1, 2],
        help="training seeds (train.seed; 42 is the preset's)",
    )
    ap.add_argument(
        "--ablation-seeds",
        type=int,
        nargs="*",
        default=None,
        help="seeds of the no_reasoning runs (default: --seeds)",
    )
    ap.add_argument("--no-precision", action="store_true", help="skip the fp32 vs bf16 loss comparison")
    ap.add_argument("--precision-steps", type=int, default=20, help="steps of each fp32 / bf16 training")
    ap.add_argument("--precision-batch", type=int, default=4, help="micro-batch of the fp32 / bf16 trainings")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "method_cpu")
    ap.add_argument(
        "--artifacts", type=Path, default=None, help="shared artifacts dir (default: <out>/artifacts)"
    )
    ap.add_argument(
        "--model", default=os.environ.get("EXP3RT_SMOLLM2_DIR"), help="SmolLM2 folder (default: the preset's)"
    )
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    args = ap.parse_args()
    out = args.out.resolve()
    artifacts = (args.artifacts or out / "artifacts").resolve()
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    curves: dict[str, list[tuple[int, float]]] = {}
    ablation_seeds = args.seeds if args.ablation_seeds is None else args.ablation_seeds
    plan = [(f"full-seed{seed}", [f"train.seed={seed}"]) for seed in args.seeds]
    for seed in ablation_seeds:  # each ablation run right after its seed's full run
        at = next((i + 1 for i, (name, _) in enumerate(plan) if name == f"full-seed{seed}"), len(plan))
        plan.insert(at, (f"no_reasoning-seed{seed}", ["ablation=no_reasoning", f"train.seed={seed}"]))
    for name, overrides in plan:
        results.append(run(name, [*overrides, *args.overrides], out, artifacts, args.model))
        if len(results) == 1 and results[0]["ok"]:
            curves[f"{name} (bf16, master weights)"] = loss_curve(results[0].get("student_dir"))
        write(out, results, curves)  # after every run: a stopped benchmark keeps what it measured
    if not args.no_precision:
        short = [
            "stages=[baselines,annotate,train]",
            f"trainer.max_steps={args.precision_steps}",
            "trainer.log_every_n_steps=1",
            f"train.micro_batch_size={args.precision_batch}",
            "train.seed=0",
            *args.overrides,
        ]
        for label, prec in (
            ("bf16", ["student.dtype=bfloat16", "trainer.precision=bf16-true"]),
            ("fp32", ["student.dtype=float32", "trainer.precision=32-true"]),
        ):
            r = run(f"precision-{label}", [*short, *prec], out, artifacts, args.model)
            results.append(r)
            curves[f"first {args.precision_steps} steps, {label}"] = loss_curve(r.get("student_dir"))
            write(out, results, curves)
    print("\n" + table(results))
    print(
        f"\nwrote {out / 'table.md'}, {out / 'results.json'}"
        + (f", {out / 'loss.png'}" if any(curves.values()) else "")
    )
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
