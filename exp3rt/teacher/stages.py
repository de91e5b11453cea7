"""The four annotation stages, each reading artifacts and writing one.

Work flows ``extract → user_profile → item_profile → rationale``. Every stage:

* builds its requests from the training split only (profiles and rationales never see a valid/test
  review; averages come from training ratings);
* takes a deterministic slice when sharded (``shard`` of ``num_shards``, by a hash of each work key);
* checks each answer against its format; a bad answer gets up to ``teacher.repair_retries`` repair
  requests, then is recorded as ``status="failed"`` with the raw text and the problem — never dropped;
* writes ``<stage>.parquet`` (or ``<stage>.shard-i-of-n.parquet``), ``<stage>.usage.json`` and
  ``<stage>.failures.jsonl`` into the annotation directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from exp3rt.artifacts import atomic_path
from exp3rt.config import ConfigError, ItemReviewPolicy, Similarity
from exp3rt.data.schema import RatingScale, describe_item, round_rating
from exp3rt.teacher.backends.base import ChatRequest
from exp3rt.teacher.formats import (
    FormatProblem,
    check_rationale,
    parse_consistency,
    parse_preference_set,
    render_preference_set,
    render_profile,
)
from exp3rt.teacher.prompts import Prompts, fmt_rating

log = logging.getLogger(__name__)

STAGE_ORDER = ("extract", "user_profile", "item_profile", "rationale")
SET_SEPARATOR = "\n---\n"
EMPTY_PROFILE = render_preference_set([], [])
# rows listed in <stage>.failures.jsonl: the teacher's own failures, and rows nothing could be built for
# because an input they need failed (missing_input: the name older artifacts used)
FAILED_STATUSES = ("failed", "failed_upstream", "missing_input")


def shard_of(key: str, num_shards: int) -> int:
    return int(hashlib.blake2b(key.encode(), digest_size=8).hexdigest(), 16) % num_shards


@dataclass
class Work:
    """One unit of a stage: an id, the template fields, the payload and the answer check."""

    key: str
    fields: dict[str, Any]
    payload: dict[str, Any]
    check: Callable[[str], Any]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    work: Work
    status: str  # ok | failed
    parsed: Any = None
    text: str | None = None  # the accepted (or last) raw answer
    problem: str | None = None
    attempts: int = 0
    from_cache: bool = False


RETRY_STEP = 1000  # each retry_failed round asks a failed row afresh at attempt numbers this much higher


def row_key(work: Work) -> str:
    """The key of the stage row a work belongs to (a profile's group summaries share their profile's)."""
    return str(work.meta.get("key", work.key))


def failed_row_keys(stage: str, frame: pd.DataFrame) -> list[str]:
    """The :func:`row_key` of each row of a stage file whose teacher answer failed (not failed_upstream:
    those are rebuilt when the stage they wait for changes)."""
    bad = frame[frame["status"] == "failed"]
    if stage == "user_profile":
        return [str(u) for u in bad["user_id"]]
    if stage == "item_profile":
        return [
            f"{i}\t{t if isinstance(t, str) else ''}"
            for i, t in zip(bad["item_id"], bad["target_user"], strict=True)
        ]
    return [f"{u}\t{i}" for u, i in zip(bad["user_id"], bad["item_id"], strict=True)]


class StageRunner:
    """Sends a stage's work through the teacher client with format checks and repair retries.

    ``attempt_base`` maps a row key of the stage being built to the attempt number its requests start
    from: 0 normally, raised by :data:`RETRY_STEP` each time ``retry_failed=true`` re-asks a failed row,
    so the retry is a new request (a cached bad answer is not reused) while every other row's requests,
    and rebuilds of the retried row later, stay the cached ones."""

    def __init__(
        self,
        client,
        prompts: Prompts,
        teacher_cfg,
        attempt_base: dict[str, int] | None = None,
        base_stage: str | None = None,
    ):
        self.client = client
        self.prompts = prompts
        self.cfg = teacher_cfg
        self.attempt_base = attempt_base or {}
        self.base_stage = base_stage

    def base(self, stage: str, work: Work) -> int:
        return self.attempt_base.get(row_key(work), 0) if stage == self.base_stage else 0

    def request(self, stage: str, work: Work, messages, attempt: int) -> ChatRequest:
        return ChatRequest(
            stage=stage,
            messages=messages,
            prompt_version=self.prompts.version(stage),
            temperature=float(self.cfg.temperature),
            max_tokens=int(self.cfg.max_tokens),
            top_p=float(self.cfg.top_p),
            seed=None if self.cfg.seed is None else int(self.cfg.seed),
            attempt=attempt + self.base(stage, work),
            payload=work.payload,
        )

    def first_requests(self, stage: str, works: list[Work]) -> list[ChatRequest]:
        return [self.request(stage, w, self.prompts.render(stage, **w.fields), 0) for w in works]

    async def run(self, stage: str, works: list[Work]) -> list[Outcome]:
        outcomes: dict[int, Outcome] = {}
        pending = [(idx, w, self.prompts.render(stage, **w.fields)) for idx, w in enumerate(works)]
        for attempt in range(int(self.cfg.repair_retries) + 1):
            if not pending:
                break
            requests = [self.request(stage, w, msgs, attempt) for _, w, msgs in pending]
            results = await self.client.run(requests)
            retry = []
            for (idx, w, msgs), res in zip(pending, results, strict=True):
                if res.response is None:
                    why = f"teacher error: {res.error}" if res.error is not None else "not sent"
                    body = getattr(
                        res.error, "body", None
                    )  # e.g. a proxy's HTML page: kept as the raw answer
                    outcomes[idx] = Outcome(w, "failed", text=body, problem=why, attempts=attempt + 1)
                    continue
                text = res.response.text
                try:
                    parsed = w.check(text)
                except FormatProblem as problem:
                    if attempt < int(self.cfg.repair_retries):
                        retry.append((idx, w, self.prompts.repair(msgs, text, str(problem))))
                    else:
                        outcomes[idx] = Outcome(
                            w, "failed", text=text, problem=str(problem), attempts=attempt + 1
                        )
                    continue
                outcomes[idx] = Outcome(
                    w, "ok", parsed, text, attempts=attempt + 1, from_cache=res.from_cache
                )
            pending = retry
        return [outcomes[i] for i in range(len(works))]


# ----------------------------------------------------------------------------------------- helpers


def _avg(values: pd.Series) -> float | None:
    return None if len(values) == 0 else float(np.round(values.mean(), 1))


def _chunks(seq: list, size: int) -> list[list]:
    return [seq[i : i + size] for i in range(0, len(seq), size)] or [[]]


def _profile_check(text: str) -> tuple[list[str], list[str]]:
    return parse_preference_set(text)


@dataclass
class AnnotationContext:
    """What every stage reads: the split, items, scale, domain and the annotate settings."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    items: pd.DataFrame
    scale: RatingScale
    domain: str
    annotation: Any  # AnnotateConf
    shard: int = 0
    num_shards: int = 1
    # other name -> aspect name, sent with each review to the extract stage (prompt.aspect_lexicon)
    aspect_lexicon: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.item_rows = {r["item_id"]: r for r in self.items.to_dict("records")}

    def mine(self, key: str) -> bool:
        return self.num_shards <= 1 or shard_of(key, self.num_shards) == self.shard

    def eval_pairs(self) -> pd.DataFrame:
        parts = [self.valid.assign(split="valid"), self.test.assign(split="test")]
        return pd.concat([p[["user_id", "item_id", "rating", "split"]] for p in parts], ignore_index=True)

    def rationale_pairs(self) -> pd.DataFrame:
        pairs = self.train[["user_id", "item_id", "rating"]].assign(split="train")
        if self.annotation.rationale_pairs == "train+valid":
            pairs = pd.concat(
                [pairs, self.valid[["user_id", "item_id", "rating"]].assign(split="valid")], ignore_index=True
            )
        elif self.annotation.rationale_pairs != "train":
            raise ConfigError(
                "annotation.rationale_pairs must be 'train' or 'train+valid' (got "
                f"{self.annotation.rationale_pairs!r})"
            )
        cap = self.annotation.max_rationale_pairs
        if cap is not None and len(pairs) > int(cap):
            pairs = pairs.sample(n=int(cap), random_state=int(self.annotation.sample_seed)).sort_index()
        return pairs.reset_index(drop=True)


# ------------------------------------------------------------------------------------------ stage 1


def extract_works(ctx: AnnotationContext) -> list[Work]:
    works = []
    for row in ctx.train.itertuples(index=False):
        key = f"{row.user_id}\t{row.item_id}"
        if not ctx.mine(key):
            continue
        review = row.review if isinstance(row.review, str) else ""
        fields = {
            "review": review,
            "summary": row.summary if isinstance(row.summary, str) else "",
            "rating": fmt_rating(row.rating),
        }
        payload = {
            "review": review,
            "summary": row.summary if isinstance(row.summary, str) else None,
            "rating": float(row.rating),
            "scale": [ctx.scale.min, ctx.scale.max],
            "domain": ctx.domain,
        }
        if ctx.aspect_lexicon:
            payload["aspect_lexicon"] = ctx.aspect_lexicon
        works.append(
            Work(key, fields, payload, parse_preference_set, {"user_id": row.user_id, "item_id": row.item_id})
        )
    return works


def extract_frame(outcomes: list[Outcome]) -> pd.DataFrame:
    rows = []
    for o in outcomes:
        likes, dislikes = o.parsed if o.status == "ok" else ([], [])
        rows.append(
            {
                "user_id": o.work.meta["user_id"],
                "item_id": o.work.meta["item_id"],
                "status": o.status,
                "preference_set": render_preference_set(likes, dislikes) if o.status == "ok" else None,
                "likes": likes,
                "dislikes": dislikes,
                "raw": o.text,
                "problem": o.problem,
                "attempts": o.attempts,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "user_id",
            "item_id",
            "status",
            "preference_set",
            "likes",
            "dislikes",
            "raw",
            "problem",
            "attempts",
        ],
    )


# ------------------------------------------------------------------------------------------ stage 2/3


def _sets_field(sets: list[str]) -> str:
    return SET_SEPARATOR.join(sets)


def profile_work(
    stage: str, key: str, sets: list[str], ctx: AnnotationContext, meta: dict, form: str = "sentences"
) -> Work:
    payload = {"preference_sets": sets, "domain": ctx.domain, "max_bullets": 5, "form": form}
    fields = {"preference_sets": _sets_field(sets), "max_bullets": 5}
    return Work(key, fields, payload, _profile_check, meta)


async def summarise_groups(
    runner: StageRunner, stage: str, groups: dict[str, list[str]], ctx: AnnotationContext, count_tokens
) -> dict[str, Outcome]:
    """Summarise each key's preference sets; keys whose sets exceed the context budget are summarised in
    groups of ``annotation.user_max_sets`` first, then the group summaries are summarised (repeatedly,
    until one call fits)."""
    budget = int(ctx.annotation.context_tokens)
    group_size = max(2, int(ctx.annotation.user_max_sets))
    current = {k: list(v) for k, v in groups.items()}
    final: dict[str, Outcome] = {}
    round_no = 0
    while current:
        works, owners = [], []
        for key, sets in current.items():
            too_big = len(sets) > group_size or count_tokens(_sets_field(sets)) > budget
            chunks = _chunks(sets, group_size) if too_big else [sets]
            if too_big and len(chunks) == 1:  # a single group over budget: halve it
                chunks = _chunks(sets, max(1, len(sets) // 2))
            for j, chunk in enumerate(chunks):
                works.append(
                    profile_work(
                        stage,
                        f"{key}#r{round_no}g{j}",
                        chunk,
                        ctx,
                        {"key": key, "round": round_no},
                        runner.prompts.profile_form,
                    )
                )
                owners.append((key, len(chunks) > 1))
        outcomes = await runner.run(stage, works)
        nxt: dict[str, list[str]] = {}
        for (key, partial), outcome in zip(owners, outcomes, strict=True):
            if not partial:
                final[key] = outcome
            elif outcome.status == "ok":
                nxt.setdefault(key, []).append(render_preference_set(*outcome.parsed))
            else:
                final.setdefault(key, outcome)  # a failed group fails the whole profile, with its raw text
        current = {k: v for k, v in nxt.items() if k not in final}
        round_no += 1
        if round_no > 8:
            raise RuntimeError(
                f"{stage}: hierarchical summary did not converge; lower annotation.user_max_sets"
            )
    return final


def profile_rows(
    kind: str,
    keys: list[tuple],
    outcomes: dict[str, Outcome],
    sets_count: dict[str, int],
    averages: dict[str, float | None],
    failed_sets: dict[str, int] | None = None,
) -> pd.DataFrame:
    """One row per key. A key with no preference set is ``no_history`` (an empty profile, a real input)
    when it had no training review, but ``failed_upstream`` (no profile: nothing may be built on it)
    when it had reviews whose extractions all failed (``failed_sets`` counts those)."""
    rows = []
    failed_sets = failed_sets or {}
    for key_tuple, key in keys:
        avg = averages.get(key)
        n_sets = sets_count.get(key, 0)
        if n_sets == 0 and failed_sets.get(key, 0):
            rows.append(
                {
                    **key_tuple,
                    "status": "failed_upstream",
                    "profile": None,
                    "likes": [],
                    "dislikes": [],
                    "average": avg,
                    "n_sets": 0,
                    "raw": None,
                    "problem": f"all {failed_sets[key]} preference-set extractions of this {kind}'s "
                    "reviews failed "
                    "(see extract.failures.jsonl; retry_failed=true re-sends them)",
                }
            )
            continue
        if n_sets == 0:
            rows.append(
                {
                    **key_tuple,
                    "status": "no_history",
                    "profile": render_profile([], [], avg),
                    "likes": [],
                    "dislikes": [],
                    "average": avg,
                    "n_sets": 0,
                    "raw": None,
                    "problem": None,
                }
            )
            continue
        o = outcomes[key]
        likes, dislikes = o.parsed if o.status == "ok" else ([], [])
        rows.append(
            {
                **key_tuple,
                "status": o.status,
                "profile": render_profile(likes, dislikes, avg) if o.status == "ok" else None,
                "likes": likes,
                "dislikes": dislikes,
                "average": avg,
                "n_sets": n_sets,
                "raw": o.text,
                "problem": o.problem,
            }
        )
    return pd.DataFrame(rows)


def ok_sets(preferences: pd.DataFrame) -> pd.DataFrame:
    return preferences[preferences["status"] == "ok"]


def failed_sets(preferences: pd.DataFrame) -> pd.DataFrame:
    return preferences[preferences["status"] != "ok"]


async def run_user_profiles(
    runner: StageRunner, ctx: AnnotationContext, preferences: pd.DataFrame, count_tokens
) -> pd.DataFrame:
    """One profile per user who appears anywhere in the split (cold users get an empty profile)."""
    users = sorted(set(ctx.train.user_id) | set(ctx.valid.user_id) | set(ctx.test.user_id))
    users = [u for u in users if ctx.mine(u)]
    good = ok_sets(preferences)
    # a user's sets in time order, so grouped summaries see coherent periods
    order = ctx.train[["user_id", "item_id", "timestamp"]]
    good = good.merge(order, on=["user_id", "item_id"], how="left").sort_values(
        ["user_id", "timestamp", "item_id"], kind="stable"
    )
    by_user = {u: g["preference_set"].tolist() for u, g in good.groupby("user_id", sort=False)}
    groups = {u: by_user[u] for u in users if u in by_user}
    outcomes = await summarise_groups(runner, "user_profile", groups, ctx, count_tokens)
    averages = {
        u: round_rating(Fraction(float(s)) / int(c))
        for u, s, c in ctx.train.groupby("user_id")["rating"].agg(["sum", "count"]).itertuples()
    }
    keys = [({"user_id": u}, u) for u in users]
    failed = failed_sets(preferences).groupby("user_id").size().to_dict()
    return profile_rows("user", keys, outcomes, {u: len(s) for u, s in groups.items()}, averages, failed)


async def run_item_profiles(
    runner: StageRunner,
    ctx: AnnotationContext,
    preferences: pd.DataFrame,
    user_profiles: pd.DataFrame | None,
    count_tokens,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Item profiles for every pair that needs one (rationale pairs + valid/test pairs) under the
    configured review-selection policy; returns (profiles, pair → profile map)."""
    # heavy: scipy (only the item-profile stage needs it)
    from exp3rt.teacher.selection import ItemProfilePlan, make_similarity

    similarity = None
    if ItemReviewPolicy(ctx.annotation.item_policy) == ItemReviewPolicy.similar_users:
        texts = None
        if Similarity(ctx.annotation.similarity) == Similarity.profile_embedding:
            if user_profiles is None:
                raise ConfigError(
                    "annotation.similarity=profile_embedding needs the user_profile stage to run first"
                )
            texts = dict(zip(user_profiles.user_id, user_profiles.profile.fillna(""), strict=True))
        similarity = make_similarity(ctx.annotation, ctx.train, texts)
    pairs = pd.concat(
        [ctx.rationale_pairs()[["user_id", "item_id"]], ctx.eval_pairs()[["user_id", "item_id"]]],
        ignore_index=True,
    )
    plan = ItemProfilePlan.from_conf(ctx.train, pairs, ctx.annotation, similarity)
    jobs = plan.jobs
    pair_map = pd.DataFrame(
        [(u, i, ji, ju) for (u, i), (ji, ju) in plan.pair_to_job.items()],
        columns=["user_id", "item_id", "job_item", "job_user"],
    )
    log.info("item_profile plan: %s", plan.stats)
    sums = ctx.train.groupby("item_id")["rating"].agg(["sum", "count"])
    own = dict(zip(zip(ctx.train.user_id, ctx.train.item_id, strict=True), ctx.train.rating, strict=True))

    def item_average(item: str, target: str | None) -> float | None:
        if item not in sums.index:
            return None
        s, c = float(sums.at[item, "sum"]), int(sums.at[item, "count"])
        if target is not None and (target, item) in own:  # leave the target pair's rating out
            s, c = s - float(own[(target, item)]), c - 1
        return None if c == 0 else round_rating(Fraction(s) / c)

    set_of = {(r.user_id, r.item_id): r.preference_set for r in ok_sets(preferences).itertuples(index=False)}
    bad = set(zip(failed_sets(preferences).user_id, failed_sets(preferences).item_id, strict=True))
    groups, counts, averages, keys, sources, failed = {}, {}, {}, [], {}, {}
    for job in jobs.itertuples(index=False):
        target = job.target_user if isinstance(job.target_user, str) else None
        key = f"{job.item_id}\t{target or ''}"
        if not ctx.mine(key):
            continue
        used = [(u, i) for u, i in job.review_keys if (u, i) in set_of]
        sets = [set_of[p] for p in used]
        sources[key] = [u for u, _ in used]
        if sets:
            groups[key] = sets
        counts[key] = len(sets)
        failed[key] = sum(1 for p in job.review_keys if tuple(p) in bad)
        averages[key] = item_average(job.item_id, target)
        keys.append(({"item_id": job.item_id, "target_user": target}, key))
    outcomes = await summarise_groups(runner, "item_profile", groups, ctx, count_tokens)
    frame = profile_rows("item", keys, outcomes, counts, averages, failed)
    frame["source_users"] = [sources[key] for _, key in keys]  # whose reviews fed the profile
    return frame, pair_map


# ------------------------------------------------------------------------------------------ stage 4


async def run_rationales(
    runner: StageRunner,
    ctx: AnnotationContext,
    user_profiles: pd.DataFrame,
    item_profiles: pd.DataFrame,
    pair_map: pd.DataFrame,
) -> pd.DataFrame:
    pairs = ctx.rationale_pairs()
    uprof = dict(zip(user_profiles.user_id, user_profiles.profile, strict=True))
    ustat = dict(zip(user_profiles.user_id, user_profiles.status, strict=True))
    iprof = {
        (r.item_id, r.target_user if isinstance(r.target_user, str) else None): r.profile
        for r in item_profiles.itertuples(index=False)
    }
    istat = {
        (r.item_id, r.target_user if isinstance(r.target_user, str) else None): r.status
        for r in item_profiles.itertuples(index=False)
    }
    job_of = {
        (r.user_id, r.item_id): (r.job_item, r.job_user if isinstance(r.job_user, str) else None)
        for r in pair_map.itertuples(index=False)
    }
    works, skipped = [], []
    for row in pairs.itertuples(index=False):
        key = f"{row.user_id}\t{row.item_id}"
        if not ctx.mine(key):
            continue
        job = job_of.get((row.user_id, row.item_id))
        up, ip = uprof.get(row.user_id), iprof.get(job)
        meta = {
            "user_id": row.user_id,
            "item_id": row.item_id,
            "rating": float(row.rating),
            "split": row.split,
        }
        if not isinstance(up, str) or not isinstance(ip, str):  # never a request built on a missing profile
            why = (
                [f"the user profile is {ustat.get(row.user_id, 'missing')}"]
                if not isinstance(up, str)
                else []
            )
            why += [f"the item profile is {istat.get(job, 'missing')}"] if not isinstance(ip, str) else []
            skipped.append(
                {
                    **meta,
                    "status": "failed_upstream",
                    "problem": " and ".join(why) + " (see their failures files)",
                }
            )
            continue
        desc = describe_item(ctx.item_rows.get(row.item_id), ctx.domain)
        rating = float(row.rating)
        fields = {
            "rating": fmt_rating(rating),
            "user_profile": up,
            "item_profile": ip,
            "item_description": desc,
        }
        payload = {
            "rating": rating,
            "scale": [ctx.scale.min, ctx.scale.max],
            "user_profile": up,
            "item_profile": ip,
            "item_description": desc,
            "domain": ctx.domain,
            "form": runner.prompts.rationale_form,
        }
        check = (lambda r: lambda text: check_rationale(text, r, ctx.scale.max))(rating)
        works.append(
            Work(
                key,
                fields,
                payload,
                check,
                {**meta, "user_profile": up, "item_profile": ip, "item_description": desc},
            )
        )
    outcomes = await runner.run("rationale", works)
    rows = [
        {
            **{k: o.work.meta[k] for k in ("user_id", "item_id", "rating", "split")},
            "status": o.status,
            "rationale": o.parsed if o.status == "ok" else None,
            "raw": o.text,
            "problem": o.problem,
            "attempts": o.attempts,
            "user_profile": o.work.meta["user_profile"],
            "item_profile": o.work.meta["item_profile"],
            "item_description": o.work.meta["item_description"],
        }
        for o in outcomes
    ]
    frame = pd.DataFrame(rows + skipped)
    if ctx.annotation.consistency_check and len(frame):
        frame = await consistency(runner, ctx, frame, works)
    return frame


async def consistency(
    runner: StageRunner, ctx: AnnotationContext, frame: pd.DataFrame, works: list[Work]
) -> pd.DataFrame:
    """A second call predicts the rating from the rationale alone; pairs off by more than the margin
    are flagged, or regenerated once (``annotation.consistency_action=regenerate``) and re-checked."""
    margin = float(ctx.annotation.consistency_margin)
    action = ctx.annotation.consistency_action  # flag | regenerate (config.ConsistencyAction)

    def check_works(rows: pd.DataFrame) -> list[Work]:
        out = []
        for r in rows.itertuples(index=False):
            out.append(
                Work(
                    f"{r.user_id}\t{r.item_id}",
                    {"rationale": r.rationale},
                    {"rationale": r.rationale, "scale": [ctx.scale.min, ctx.scale.max]},
                    lambda t: parse_consistency(t, ctx.scale.min, ctx.scale.max),
                    {},
                )
            )
        return out

    ok = frame["status"] == "ok"
    frame = frame.assign(implied_rating=np.nan, flagged=False)
    outcomes = await runner.run("consistency", check_works(frame[ok]))
    implied = [o.parsed if o.status == "ok" else np.nan for o in outcomes]
    frame.loc[ok, "implied_rating"] = implied
    off = ok & ((frame["implied_rating"] - frame["rating"]).abs() > margin)
    if action == "regenerate" and off.any():
        by_key = {w.key: w for w in works}
        redo = [
            by_key[f"{u}\t{i}"]
            for u, i in zip(frame.loc[off, "user_id"], frame.loc[off, "item_id"], strict=True)
        ]
        # a fresh sample: a different attempt number gives a new cache entry for the same prompt
        requests = [
            runner.request("rationale", w, runner.prompts.render("rationale", **w.fields), attempt=100)
            for w in redo
        ]
        results = await runner.client.run(requests)
        for w, res in zip(redo, results, strict=True):
            idx = frame.index[(frame.user_id == w.meta["user_id"]) & (frame.item_id == w.meta["item_id"])][0]
            try:
                text = check_rationale(res.response.text, w.meta["rating"], ctx.scale.max) if res.ok else None
            except FormatProblem:
                text = None
            if text:
                frame.loc[idx, "rationale"] = text
        again = await runner.run("consistency", check_works(frame[off]))
        frame.loc[off, "implied_rating"] = [o.parsed if o.status == "ok" else np.nan for o in again]
        off = ok & ((frame["implied_rating"] - frame["rating"]).abs() > margin)
    frame["flagged"] = off.to_numpy()
    return frame


def write_failures(frame: pd.DataFrame, path: Path) -> int:
    failed = frame[frame["status"].isin(FAILED_STATUSES)]
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for rec in failed.to_dict("records"):
            f.write(
                json.dumps(
                    {
                        k: v
                        for k, v in rec.items()
                        if k in ("user_id", "item_id", "target_user", "status", "raw", "problem")
                    },
                    default=str,
                )
                + "\n"
            )
    return len(failed)
