"""What reranking a retriever's top-20 by rating can do at best on the synthetic world: the world's own
noise-free rating of each candidate (``exp3rt.data.synthetic``: item bias + the profile-match term; the
user's bias is the same for all of a user's candidates), with Gaussian noise added to stand in for a
student of that error, reorders LightGCN's candidates for every test user. Prints nDCG@10 before and after
for two definitions of a relevant item — every test item of the user, or only those rated ≥ 4 — and for
the rating alone or blended with the first-stage position (``eval.rerank_rating_weight``):

    python benchmarks/rerank_oracle.py                          # the method_cpu world and split
    python benchmarks/rerank_oracle.py dataset.world.selection_bias=2.0

In this world users pick what to rate mostly by popularity (``selection_bias`` tilts it towards items whose
description promises what they like), so a perfect rating predictor does not say *which* items a user
rated; it says which of them they liked. No student is involved: this bounds what any student can reach.

With ``--evaluation DIR`` (an evaluation that reranked, e.g. ``<artifacts>/evaluations/<run>``; the
overrides must name the run's artifacts and world) it compares, on that evaluation's own users and
candidates (its ``rerank_scores.jsonl``), what each score gains with β cross-fitted as the evaluation does
(``eval.rerank_tune_on=crossfit``: each half of the users reranked with the β best on the other half):

* the student's expected rating;
* the teacher's scored rule on the same prompts: the estimate the extractive teacher computes from the two
  profiles the student is shown, i.e. a student that imitated its teacher perfectly;
* the world's noise-free rating and its profile-match term alone, which no model sees.

    python benchmarks/rerank_oracle.py --evaluation /tmp/a/evaluations/synthetic-7211b03c4f56 \
        paths.artifacts_dir=/tmp/a

Where the teacher's rule gains no more than the student, a better student of this teacher cannot help:
the profiles are the limit.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # demo_signal: the teacher's rule on a prompt

from exp3rt import CONF_DIR  # noqa: E402
from exp3rt.baselines.retrievers import build_retrievers, relevant_sets  # noqa: E402
from exp3rt.config import RetrieverBaselinesConf, register_schemas  # noqa: E402
from exp3rt.data.prepare import prepare_dataset  # noqa: E402
from exp3rt.data.splits import prepare_split  # noqa: E402
from exp3rt.data.synthetic import W_DISLIKED_STRONG, W_DISLIKED_WEAK, W_LIKED_STRONG, W_LIKED_WEAK  # noqa: E402
from exp3rt.evaluation.rerank import crossfit, reranked_lists, score_auc  # noqa: E402
from exp3rt.inference.rerank import rerank, rerank_metrics  # noqa: E402
from exp3rt.metrics import topk_metrics  # noqa: E402
from exp3rt.student.examples import candidate_examples  # noqa: E402
from exp3rt.teacher.annotate import find_annotation_dir  # noqa: E402

NOISES = (0.0, 0.7)
WEIGHTS = (None, 0.5, 1.0, 2.0)


def world_truth(prepared):
    """``truth(user, item, bias=True)``: the world's noise-free rating of the pair less the user's bias
    (item bias + the profile-match term), or with ``bias=False`` the match term alone."""
    users_t = prepared.dataset.extras["user_truth"].set_index("user_id")
    items_t = prepared.dataset.extras["item_truth"].set_index("item_id")

    def truth(u: str, i: str, bias: bool = True) -> float:
        likes, dislikes = set(users_t.at[u, "likes"]), set(users_t.at[u, "dislikes"])
        strong, weak = set(items_t.at[i, "strong"]), set(items_t.at[i, "weak"])
        return float(
            (items_t.at[i, "bias"] if bias else 0.0)
            + W_LIKED_STRONG * len(likes & strong)
            + W_LIKED_WEAK * len(likes & weak)
            + W_DISLIKED_WEAK * len(dislikes & weak)
            + W_DISLIKED_STRONG * len(dislikes & strong)
        )

    return truth


def compare(cfg, prepared, split, evaluation: Path, grid=(0.25, 0.5, 1.0, 2.0), k: int = 10) -> None:
    """The student's scores in ``evaluation``'s rerank_scores.jsonl against the teacher's rule and the
    world's truth on the same candidates (the module's docstring)."""
    # heavy: demo_signal imports the teacher
    from demo_signal import parse_profile, teacher_rationale

    from exp3rt.data.synthetic import vocab_for
    from exp3rt.teacher.backends.extractive import estimate

    path = evaluation / "rerank_scores.jsonl"
    if not path.exists():
        sys.exit(f"{path}: not found (an evaluation with eval.rerank=true writes it)")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows = [r for r in rows if r["part"] == "test"]
    lists: dict = {}
    for r in sorted(rows, key=lambda r: (r["user_id"], r["first_stage_rank"])):
        lists.setdefault(r["user_id"], []).append(r["item_id"])
    threshold = OmegaConf.select(cfg, "baselines.retrieval.positive_threshold", default=None)
    relevant = relevant_sets(split.test, threshold)
    judged = {u: relevant.get(u, set()) for u in lists}
    lo, hi = float(prepared.dataset.scale.min), float(prepared.dataset.scale.max)
    domain = str(cfg.dataset.domain)
    examples, skipped = candidate_examples(
        find_annotation_dir(cfg, prepared, split),
        split,
        prepared.dataset.items,
        domain,
        prepared.dataset.scale,
        cfg.sft,
        cfg.ablation,
        cfg.student_prompt,
        lists,
    )
    rule = {
        (u, e.meta["item_id"]): float(
            re.findall(r"Estimate: (\d+(?:\.\d+)?)", teacher_rationale(e, domain, (lo, hi)))[-1]
        )
        for u, es in examples.items()
        for e in es
    }
    # "the protagonist" as the world writes it, "protagonist" as a profile names it: the world's aspect
    nouns = sorted(
        ((n.removeprefix("the "), a.name) for a in vocab_for(domain).aspects for n, _ in a.nouns),
        key=lambda p: -len(p[0]),
    )

    def resolved(e) -> float:
        """The teacher's rule with the profiles' words read as the world's aspects (synonyms meet)."""
        (u0, u1), (i0, i1) = e.meta["cut_spans"][:2]
        text = e.user if isinstance(e.user, str) else e.user.text
        likes, dislikes, average = parse_profile(text[u0:u1], nouns)
        strong, weak, _ = parse_profile(text[i0:i1], nouns)
        counts = (len(likes & strong), len(likes & weak), len(dislikes & weak))
        return estimate(*counts, [average] if average else [], (lo, hi))

    truth = world_truth(prepared)
    columns = {
        "the student's expected rating": {(r["user_id"], r["item_id"]): r["expected"] for r in rows},
        "the teacher's rule on the same prompts": rule,
        "the same rule, profile words read as the world's aspects": {
            (u, e.meta["item_id"]): resolved(e) for u, es in examples.items() for e in es
        },
        "the world's rating (item bias + match)": {(u, i): truth(u, i) for u, c in lists.items() for i in c},
        "the world's match term alone": {(u, i): truth(u, i, False) for u, c in lists.items() for i in c},
    }
    match = np.array([columns["the world's match term alone"][(r["user_id"], r["item_id"])] for r in rows])
    first = rerank_metrics(lists, lists, judged, [k])[f"before/ndcg@{k}"]
    n_skipped = sum(sum(c.values()) for c in skipped.values())
    print(
        f"{evaluation}: {len(lists)} users, {len(rows)} candidates ({n_skipped} "
        f"skipped by the teacher's prompts); first stage nDCG@{k} {first:.4f}; β ∈ {list(grid)}\n"
    )
    print(
        f"| score | AUC | corr. with the match term | nDCG@{k}, β cross-fitted | gain [95% CI] | "
        + " | ".join(f"β = {w:g} (read off these users)" for w in grid)
        + " |"
    )
    print("|---|---|---|---|---|" + "---|" * len(grid))
    for name, by_pair in columns.items():
        values = np.array([by_pair.get((r["user_id"], r["item_id"]), np.nan) for r in rows])
        if np.isnan(values).any():
            sys.exit(f"{name}: {int(np.isnan(values).sum())} candidates without a score")
        # onto the rating scale (only the order within a user and the spread against β matter)
        a, b = values.min(), values.max()
        onto = lo + (values - a) / ((b - a) or 1.0) * (hi - lo) if name.startswith("the world") else values
        scores: dict = {}
        for r, v in zip(rows, onto, strict=True):
            scores.setdefault(r["user_id"], []).append((r["item_id"], float(v)))
        ranked = lambda s, ls, w: reranked_lists(s, ls, w, (lo, hi))  # noqa: E731
        after, _ = crossfit(scores, lists, judged, list(grid), k, ranked, rerank_metrics)
        m = rerank_metrics(lists, after, judged, [k])
        auc = score_auc([{**r, "expected": float(v)} for r, v in zip(rows, onto, strict=True)])
        cells = [
            f"{rerank_metrics(lists, ranked(scores, lists, w), judged, [k])[f'after/ndcg@{k}']:.4f}"
            for w in grid
        ]
        print(
            f"| {name} | {auc['auc/student']:.3f} | {np.corrcoef(values, match)[0, 1]:.3f} | "
            f"{m[f'after/ndcg@{k}']:.4f} | {m[f'gain/ndcg@{k}']:+.4f} "
            f"[{m[f'gain/ndcg@{k}_ci_low']:+.3f}, {m[f'gain/ndcg@{k}_ci_high']:+.3f}] | "
            + " | ".join(cells)
            + " |"
        )


def main(argv: list[str]) -> None:
    evaluation = None
    if "--evaluation" in argv:
        at = argv.index("--evaluation")
        evaluation, argv = Path(argv[at + 1]), argv[:at] + argv[at + 2 :]
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="pipeline", overrides=["experiment=method_cpu", *argv])
    prepared = prepare_dataset(cfg.dataset, cfg.paths.data_dir)
    split = prepare_split(prepared, cfg.split)
    if evaluation is not None:
        return compare(cfg, prepared, split, evaluation)
    lo, hi = float(prepared.dataset.scale.min), float(prepared.dataset.scale.max)
    truth = world_truth(prepared)

    print("| relevant | first stage | noise | rating alone | blend 0.5 | blend 1.0 | blend 2.0 |")
    print("|---|---|---|---|---|---|---|")
    for threshold in (None, 4.0):
        rcfg = OmegaConf.merge(
            OmegaConf.structured(RetrieverBaselinesConf),
            {"models": ["lightgcn"], "num_candidates": 20, "positive_threshold": threshold},
        )
        relevant = relevant_sets(split.test, threshold)
        users = sorted(u for u, s in relevant.items() if s)
        first = {
            u: list(c)[:20]
            for u, c in build_retrievers(rcfg)["lightgcn"].fit(split.train).recommend(users, 20).items()
        }
        judged = {u: relevant[u] for u in users}
        before = topk_metrics(first, judged, [10])["ndcg@10"]
        for noise in NOISES:
            rng = np.random.default_rng(0)
            # the truth shifted into the scale's middle (only the order within a user matters), plus noise
            scores = {
                u: [(i, 3.0 + truth(u, i) + rng.normal(0, noise), []) for i in c] for u, c in first.items()
            }
            cells = []
            for w in WEIGHTS:
                after = rerank(scores, rating_weight=w, scale=(lo, hi))
                cells.append(f"{topk_metrics(after, judged, [10])['ndcg@10']:.4f}")
            label = "every test item" if threshold is None else f"test items rated >= {threshold:g}"
            print(f"| {label} ({len(users)} users) | {before:.4f} | {noise} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
