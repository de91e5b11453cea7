"""Top-k reranking in exp3rt-evaluate (``eval.rerank=true``): a first stage's candidates for the scored
part's users, scored by the student and reranked, judged before and after. The scoring itself (shared
prompt prefixes, the rating-weight blend, the metrics) lives in :mod:`exp3rt.inference.rerank`."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from omegaconf import OmegaConf

from exp3rt.artifacts import write_text_atomic
from exp3rt.config import ConfigError, RetrieverBaselinesConf
from exp3rt.inference.predict import backend_of, estimate_rewrite, student_for
from exp3rt.student.examples import candidate_examples
from exp3rt.student.prompts import StudentPrompts
from exp3rt.student.ratings import RatingTokens
from exp3rt.student.tokenize import render


def rerank_candidates(
    tcfg, adapter_dir: Path, ann_dir: Path, prepared, split, ev, ablation, out_dir: Path | None = None
) -> dict:
    """First-stage candidates (a retriever fitted on the training split, training items excluded) for
    the test users, scored by the student's expected rating with each user's shared prompt prefix run
    once, reranked; nDCG/Recall/Hit@k before and after. Candidates the student cannot be prompted for
    (no shared item profile) keep their first-stage place after the scored ones and are counted.

    ``eval.rerank_tune_weights``: before the test users are read, the same student scores the candidates
    of up to ``eval.rerank_tune_users`` users' VALIDATION pairs, and the blend weight β whose reranking
    gives those users the highest nDCG@``eval.rerank_tune_k`` reranks the test users (the first listed
    wins a tie). ``out_dir``: every scored candidate is written to ``rerank_scores.jsonl`` there.

    ``ablation``: the one the candidates are prompted with, the readout of ``eval.rerank_mode``
    (:func:`exp3rt.evaluation.evaluate.readout_ablation`)."""
    # heavy: torch (the retrievers, the reranker)
    from exp3rt.baselines.retrievers import relevant_sets
    from exp3rt.inference.rerank import rerank_metrics, score_candidates

    n = int(ev.num_candidates)
    part = str(ev.get("split") or "test")
    grid = [float(w) for w in (ev.get("rerank_tune_weights") or [])]
    # relevant: the part's pairs rated >= baselines.retrieval.positive_threshold (all when null), as the
    # baselines stage judges its retrievers (its relevant.parquet, read below, was written the same way)
    threshold = OmegaConf.select(tcfg, "baselines.retrieval.positive_threshold", default=None)
    relevant = relevant_sets(split.part(part), threshold)  # valid during a search
    users = sorted(u for u, s in relevant.items() if s)
    theirs = None
    fitted = None
    if ev.get(
        "candidates_file"
    ):  # the retriever's own file, e.g. <baselines run>/candidates/lightgcn.parquet
        # heavy: torch (the retrievers)
        from exp3rt.baselines.retrievers import read_candidates, read_relevant

        given = read_candidates(ev.candidates_file)
        # judged by the test split of the run that wrote the candidates (relevant.parquet beside them),
        # which may be another dataset's (the release top-k split); a bare file: this split's test pairs.
        # A search (eval.split=valid) never reads those test pairs: it is judged by this split's validation
        # pairs
        theirs = read_relevant(ev.candidates_file) if part == "test" else None
        if theirs is not None:
            relevant = theirs
            users = sorted(u for u, s in relevant.items() if s)
        users = [u for u in users if u in given]
        source = str(ev.candidates_file)
    else:
        fitted = fit_retriever(tcfg, ev, split, n, threshold)
        source = str(ev.rerank_retriever)
    if ev.get("rerank_max_users"):
        users = users[: int(ev.rerank_max_users)]
    first = {u: list(given[u])[:n] for u in users} if fitted is None else top_n(fitted, users, n)
    scale = prepared.dataset.scale
    ratings = RatingTokens(scale.min, scale.max, scale.step, float(tcfg.sft.rating_offset))
    prefix = StudentPrompts(tcfg.student_prompt, str(tcfg.dataset.domain), ratings).rating_prefix
    if backend_of(ev) == "vllm":  # the same scores; the engine built for the predictions is reused
        # heavy: torch, vllm
        from exp3rt.inference.vllm_backend import load_vllm_student

        student = load_vllm_student(tcfg, Path(adapter_dir), ev, ratings)
        tok, score = student.tokenizer, student.score_candidates
    else:
        model, tok = student_for(tcfg, adapter_dir, ev)
        score = partial(score_candidates, model, tok, rewrite=estimate_rewrite(tcfg, ev))
    sizes = (
        {} if backend_of(ev) == "vllm" else {"batch_size": int(ev.batch_size)}
    )  # vLLM schedules its own batches

    def scored(lists: dict) -> tuple[dict, dict, dict, int]:
        """The student's scores of ``{user: [item, ...]}``; its timings, the skipped counts and how many
        candidates could not be prompted."""
        cands, skipped = candidate_examples(
            ann_dir,
            split,
            prepared.dataset.items,
            str(tcfg.dataset.domain),
            scale,
            tcfg.sft,
            ablation,
            tcfg.student_prompt,
            lists,
        )
        prompts_by_user = {
            u: [(ex.meta["item_id"], render(tok, ex, add_answer=False)[0]) for ex in exs]
            for u, exs in cands.items()
        }
        stats: dict = {}
        out = score(
            prompts_by_user,
            ratings,
            prefix,
            mode=str(ev.rerank_mode),
            max_new_tokens=int(ev.max_new_tokens or tcfg.student.max_new_tokens),
            stats=stats,
            **sizes,
        )
        unscored = sum(len(lists[u]) - len(cands.get(u, [])) for u in lists)
        return out, stats, skipped, unscored

    ranked = partial(reranked_lists, span=(float(scale.min), float(scale.max)))
    weight = ev.get("rerank_rating_weight")
    tune_on = str(ev.get("rerank_tune_on") or "valid")
    k = int(ev.get("rerank_tune_k") or 10)
    tuning: dict = {}
    rows: list[dict] = []
    if grid and tune_on == "valid":
        # validation users' candidates: this retriever, or with a candidates file (test users only) the
        # baselines stage's settings of eval.rerank_retriever fitted again on the same training pairs
        fitted = fitted or fit_retriever(tcfg, ev, split, n, threshold)
        weight, tuning, vscores, vfirst, vrel = tune_weight(
            split, threshold, fitted, n, grid, k, ev.get("rerank_tune_users"), scored, ranked, rerank_metrics
        )
        tuning["retriever"] = str(ev.rerank_retriever)
        rows += score_rows(vscores, vfirst, vrel, "valid", list(ratings.ratings))
    scores, stats, skipped, unscored = scored(first)
    judged = {u: relevant[u] for u in first}
    rows += score_rows(scores, first, judged, part, list(ratings.ratings))
    separation = score_auc([r for r in rows if r["part"] == part])
    seconds = {u: float(s.get("seconds", 0.0)) for u, s in stats.items()} if stats else None
    if grid and tune_on == "crossfit":
        after, tuning = crossfit(scores, first, judged, grid, k, ranked, rerank_metrics)
        weight = [fold["chosen"] for fold in tuning["folds"]]
    else:
        after = ranked(scores, first, weight)
    out = rerank_metrics(first, after, judged, list(ev.ks), seconds_per_user=seconds)
    if weight is not None:  # the plain rating order beside the blend, on the same scores
        plain = rerank_metrics(first, ranked(scores, first, None), judged, list(ev.ks))
        out.update(
            {f"rating_only/{k.split('/', 1)[1]}": v for k, v in plain.items() if k.startswith("after/")}
        )
    if grid:  # every tried weight on all the scored users too: shown, never used to choose
        out["tuning"] = {
            **tuning,
            "on": tune_on,
            "scored_ndcg": {
                fmt_weight(w): rerank_metrics(first, ranked(scores, first, w), judged, [k])[f"after/ndcg@{k}"]
                for w in grid
            },
        }
    out.update(separation)
    if out_dir is not None:
        write_text_atomic(Path(out_dir) / "rerank_scores.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    out.update(
        {
            "retriever": source,
            "num_candidates": n,
            "mode": str(ev.rerank_mode),
            "rating_weight": weight,
            "backend": backend_of(ev),
            "relevant": f"this split's {part} pairs"
            + (f" rated >= {threshold:g}" if threshold is not None else "")
            if theirs is None
            else "the candidates' run (relevant.parquet beside the file)",
            "candidates_unscored": int(unscored),
            "skipped": skipped,
            "seconds_per_user": out.get("time_per_user_s", 0.0),
        }
    )
    return out


def reranked_lists(scores: dict, lists: dict, weight: float | None, span: tuple[float, float]) -> dict:
    """``lists`` reranked by ``scores`` (``{user: [(item, expected rating, ...), ...]}``, ratings on
    ``span``) alone or blended with weight β; unscored candidates keep their first-stage place after the
    scored ones."""
    # heavy: torch (the reranker)
    from exp3rt.inference.rerank import rerank

    order = rerank({u: scores[u] for u in lists if u in scores}, rating_weight=weight, scale=span)
    return {u: order.get(u, []) + [i for i in lists[u] if i not in set(order.get(u, []))] for u in lists}


def fit_retriever(tcfg, ev, split, n: int, threshold):
    """``eval.rerank_retriever`` with the run's ``baselines.retrieval`` settings (the baselines stage's),
    fitted on the training pairs."""
    # heavy: torch (the retrievers)
    from exp3rt.baselines.retrievers import build_retrievers

    settings = OmegaConf.select(tcfg, "baselines.retrieval", default=None) or {}
    rcfg = OmegaConf.merge(
        OmegaConf.structured(RetrieverBaselinesConf),
        settings,
        {"models": [str(ev.rerank_retriever)], "num_candidates": n, "positive_threshold": threshold},
    )
    return build_retrievers(rcfg)[str(ev.rerank_retriever)].fit(split.train)


def top_n(fitted, users: list, n: int) -> dict:
    """A fitted retriever's top ``n`` for each user (training items excluded)."""
    given = fitted.recommend(users, n) if users else {}
    return {u: list(given[u])[:n] for u in users}


def fmt_weight(w: float) -> str:
    return f"{float(w):g}"


def tune_weight(split, threshold, fitted, n, grid, k, max_users, scored, ranked, rerank_metrics):
    """The blend weight β of ``grid`` whose reranking gives (up to ``max_users`` of) the validation users
    the highest nDCG@``k``: ``(β, figures, scores, first-stage lists, relevant sets)``."""
    # heavy: torch (the retrievers)
    from exp3rt.baselines.retrievers import relevant_sets

    valid = split.part("valid")
    if valid is None or not len(valid):
        raise ConfigError(
            "eval.rerank_tune_weights chooses the blend weight on validation users, but this split has no "
            "validation pairs; choose it on two folds of the reranked users instead: "
            "eval.rerank_tune_on=crossfit"
        )
    rel = relevant_sets(valid, threshold)
    users = sorted(u for u, s in rel.items() if s)
    if max_users:
        users = users[: int(max_users)]
    first = top_n(fitted, users, n)
    scores, _, _, _ = scored(first)
    judged = {u: rel[u] for u in first}
    best, table, before = best_weight(scores, first, judged, grid, k, ranked, rerank_metrics)
    figures = {
        "weights": [float(w) for w in grid],
        "chosen": float(best),
        "metric": f"ndcg@{k}",
        "users": len(first),
        "valid_before": before,
        "valid_ndcg": {fmt_weight(w): table[w] for w in grid},
    }
    return best, figures, scores, first, judged


def best_weight(scores: dict, lists: dict, relevant: dict, grid: list[float], k: int, ranked, rerank_metrics):
    """The β of ``grid`` whose reranking of ``lists`` by ``scores`` gives the highest nDCG@k against
    ``relevant`` (the first listed wins a tie): ``(β, {β: nDCG@k}, the first stage's nDCG@k)``."""
    table = {
        w: rerank_metrics(lists, ranked(scores, lists, w), relevant, [k])[f"after/ndcg@{k}"] for w in grid
    }
    best = max(grid, key=lambda w: (table[w], -grid.index(w)))
    return best, table, rerank_metrics(lists, lists, relevant, [k])[f"before/ndcg@{k}"]


def crossfit(scores: dict, first: dict, judged: dict, grid: list[float], k: int, ranked, rerank_metrics):
    """Two folds of the scored users (alternate users in sorted order): each fold is reranked with the β
    of ``grid`` that gives the OTHER fold the highest nDCG@k, so no user's relevant items choose the β
    that user is reranked with. ``(reranked lists, figures)``."""
    users = list(first)
    folds = [users[0::2], users[1::2]]
    if not folds[1]:
        raise ConfigError(
            f"eval.rerank_tune_on=crossfit chooses β for each of two folds of users on the other, but only "
            f"{len(users)} user was reranked; rerank more users (eval.rerank_max_users=null) or give the "
            "weight: eval.rerank_tune_weights=[] eval.rerank_rating_weight=1.0"
        )
    after: dict = {}
    figures = []
    for mine, other in ((folds[0], folds[1]), (folds[1], folds[0])):
        lists = {u: first[u] for u in other}
        rel = {u: judged[u] for u in other}
        best, table, before = best_weight(scores, lists, rel, grid, k, ranked, rerank_metrics)
        after.update(ranked(scores, {u: first[u] for u in mine}, best))
        figures.append(
            {
                "users": len(mine),
                "chosen": float(best),
                "chosen_on_users": len(other),
                "other_before": before,
                "other_ndcg": {fmt_weight(w): table[w] for w in grid},
            }
        )
    return {u: after[u] for u in users}, {
        "weights": [float(w) for w in grid],
        "metric": f"ndcg@{k}",
        "folds": figures,
    }


def score_auc(rows: list[dict]) -> dict:
    """How well each order separates a user's relevant candidates from the rest, whatever the blend: the
    chance that a relevant scored candidate comes before an irrelevant one (ties half), by the student's
    expected rating (``auc/student``) and by the first stage (``auc/first_stage``); the mean over the
    ``auc/users`` users with both kinds."""
    users: dict = {}
    for r in rows:
        users.setdefault(r["user_id"], []).append(r)
    student, first = [], []
    for rs in users.values():
        pos = [r for r in rs if r["relevant"]]
        neg = [r for r in rs if not r["relevant"]]
        if not pos or not neg:
            continue
        pairs = [(p, q) for p in pos for q in neg]
        student.append(
            sum((p["expected"] > q["expected"]) + 0.5 * (p["expected"] == q["expected"]) for p, q in pairs)
            / len(pairs)
        )
        first.append(sum(p["first_stage_rank"] < q["first_stage_rank"] for p, q in pairs) / len(pairs))
    if not student:
        return {"auc/users": 0}
    return {
        "auc/student": sum(student) / len(student),
        "auc/first_stage": sum(first) / len(first),
        "auc/users": len(student),
    }


def score_rows(scores: dict, first: dict, relevant: dict, part: str, levels: list[float]) -> list[dict]:
    """One row per scored candidate: its user, item, first-stage rank, expected rating, the readout's
    probability of each rating (``levels``, e.g. for P(r >= 4)) and relevance."""
    rows = []
    for user, items in first.items():
        rank = {item: r for r, item in enumerate(items)}
        for item, expected, *rest in scores.get(user, []):
            probs = list(rest[0]) if rest else []  # the readout's distribution over ``levels``
            dist = {f"{v:g}": float(q) for v, q in zip(levels, probs, strict=True)} if probs else {}
            rows.append(
                {
                    "part": part,
                    "user_id": str(user),
                    "item_id": str(item),
                    "first_stage_rank": rank[item],
                    "expected": float(expected),
                    "probs": dist,
                    "relevant": item in relevant.get(user, ()),
                }
            )
    return rows
