"""Top-k reranking in exp3rt-evaluate (``eval.rerank=true``): a first stage's candidates for the scored
part's users, scored by the student and reranked, judged before and after. The scoring itself (shared
prompt prefixes, the rating-weight blend, the metrics) lives in :mod:`exp3rt.inference.rerank`."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from omegaconf import OmegaConf

from exp3rt.config import RetrieverBaselinesConf
from exp3rt.inference.predict import backend_of, estimate_rewrite, student_for
from exp3rt.student.examples import candidate_examples
from exp3rt.student.prompts import StudentPrompts
from exp3rt.student.ratings import RatingTokens
from exp3rt.student.tokenize import render


def rerank_candidates(tcfg, adapter_dir: Path, ann_dir: Path, prepared, split, ev, ablation) -> dict:
    """First-stage candidates (a retriever fitted on the training split, training items excluded) for
    the test users, scored by the student's expected rating with each user's shared prompt prefix run
    once, reranked; nDCG/Recall/Hit@k before and after. Candidates the student cannot be prompted for
    (no shared item profile) keep their first-stage place after the scored ones and are counted.

    ``ablation``: the one the candidates are prompted with, the readout of ``eval.rerank_mode``
    (:func:`exp3rt.evaluation.evaluate.readout_ablation`)."""
    # heavy: torch (the retrievers, the reranker)
    from exp3rt.baselines.retrievers import build_retrievers, relevant_sets
    from exp3rt.inference.rerank import rerank, rerank_metrics, score_candidates

    n = int(ev.num_candidates)
    part = str(ev.get("split") or "test")
    # relevant: the part's pairs rated >= baselines.retrieval.positive_threshold (all when null), as the
    # baselines stage judges its retrievers (its relevant.parquet, read below, was written the same way)
    threshold = OmegaConf.select(tcfg, "baselines.retrieval.positive_threshold", default=None)
    relevant = relevant_sets(split.part(part), threshold)  # valid during a search
    users = sorted(u for u, s in relevant.items() if s)
    theirs = None
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
        rcfg = OmegaConf.merge(
            OmegaConf.structured(RetrieverBaselinesConf),
            {"models": [str(ev.rerank_retriever)], "num_candidates": n, "positive_threshold": threshold},
        )
        given = build_retrievers(rcfg)[str(ev.rerank_retriever)].fit(split.train).recommend(users, n)
        source = str(ev.rerank_retriever)
    if ev.get("rerank_max_users"):
        users = users[: int(ev.rerank_max_users)]
    first = {u: list(given[u])[:n] for u in users}
    cands, skipped = candidate_examples(
        ann_dir,
        split,
        prepared.dataset.items,
        str(tcfg.dataset.domain),
        prepared.dataset.scale,
        tcfg.sft,
        ablation,
        tcfg.student_prompt,
        first,
    )
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
    prompts_by_user = {
        u: [(ex.meta["item_id"], render(tok, ex, add_answer=False)[0]) for ex in exs]
        for u, exs in cands.items()
    }
    stats: dict = {}
    sizes = (
        {} if backend_of(ev) == "vllm" else {"batch_size": int(ev.batch_size)}
    )  # vLLM schedules its own batches
    scores = score(
        prompts_by_user,
        ratings,
        prefix,
        mode=str(ev.rerank_mode),
        max_new_tokens=int(ev.max_new_tokens or tcfg.student.max_new_tokens),
        stats=stats,
        **sizes,
    )
    weight = ev.get("rerank_rating_weight")

    def complete(ranked: dict) -> dict:  # unscored candidates keep their first-stage place after the scored
        return {
            u: ranked.get(u, []) + [i for i in first[u] if i not in set(ranked.get(u, []))] for u in first
        }

    after = complete(rerank(scores, rating_weight=weight, scale=(float(scale.min), float(scale.max))))
    seconds = {u: float(s.get("seconds", 0.0)) for u, s in stats.items()} if stats else None
    judged = {u: relevant[u] for u in first}
    out = rerank_metrics(first, after, judged, list(ev.ks), seconds_per_user=seconds)
    if weight is not None:  # the plain rating order beside the blend, on the same scores
        plain = rerank_metrics(first, complete(rerank(scores)), judged, list(ev.ks))
        out.update(
            {f"rating_only/{k.split('/', 1)[1]}": v for k, v in plain.items() if k.startswith("after/")}
        )
    unscored = sum(len(first[u]) - len(cands.get(u, [])) for u in first)
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
