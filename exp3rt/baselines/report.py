"""The exp3rt-baselines table (rating baselines, then retrievers), printed and written as report.md."""

from __future__ import annotations

from exp3rt.tables import markdown_table


def baselines_report(metrics: dict) -> str:
    """The exp3rt-baselines table: rating baselines, then retrievers."""
    ds, sp = metrics["dataset"], metrics["split"]
    tag = " — SYNTHETIC data (exp3rt synthetic world)" if ds.get("synthetic") else ""
    counts = sp["stats"]["counts"]
    out = [
        f"Dataset {ds['name']}{tag}: {ds['interactions']:,} ratings, {ds['users']:,} users, "
        f"{ds['items']:,} items, "
        f"scale {ds['scale'][0]:g}–{ds['scale'][1]:g}",
        f"Split {sp['strategy']} (seed {sp['seed']}): train {counts['train']:,} / valid "
        f"{counts['valid']:,} / "
        f"test {counts['test']:,}; test users warm {sp['stats']['test_users_warm']} / cold "
        f"{sp['stats']['test_users_cold']}",
    ]
    source = metrics.get("data_report") or {}
    if source.get("skipped_total"):
        out.append(
            f"Records skipped (lenient mode): {source['skipped_total']:,} — see data_report.md in "
            f"{metrics.get('data_dir')}"
        )
    if source.get("notes"):
        out.append(
            "Repaired in the source (data report): "
            + "; ".join(f"{k}: {v:,}" for k, v in source["notes"].items())
        )
    out.append("")
    rating = metrics.get("rating", {})
    if metrics.get("rating_skipped"):
        out += [f"Rating prediction: skipped ({metrics['rating_skipped']})", ""]
    if rating:
        rows = [[name, r["rmse"], r["mae"], r["rmse_warm"], r["rmse_cold"]] for name, r in rating.items()]
        out += [
            "Rating prediction (test pairs)",
            markdown_table(["model", "RMSE", "MAE", "RMSE warm", "RMSE cold"], rows),
            "",
        ]
    retrieval = metrics.get("retrieval", {})
    if retrieval:
        ks = metrics["protocol"]["topk"]["ks"]
        n = metrics["protocol"]["topk"]["num_candidates"]
        # the candidate count tells how much the reranker can reach; each metric once, even when eval.ks has
        # it
        keys = list(
            dict.fromkeys(
                [f"recall@{k}" for k in ks]
                + [f"ndcg@{k}" for k in ks]
                + [f"hit@{ks[-1]}"]
                + [f"recall@{n}", f"ndcg@{n}", f"hit@{n}"]
            )
        )
        rows = [[name] + [r.get(k) for k in keys] for name, r in retrieval.items()]
        out += [
            f"First-stage retrieval ({metrics['protocol']['topk']['users']} test users; training items "
            "excluded; "
            f"relevant = {metrics['protocol']['topk']['relevant']})",
            markdown_table(["retriever", *keys], rows),
        ]
    return "\n".join(out)
