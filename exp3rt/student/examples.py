"""SFT examples for the student, built from a teacher's annotation directory.

Tasks (``sft.tasks``):

* ``extract`` — a training review → its preference set (``extract.parquet``, status ok);
* ``user_profile`` — a user's preference sets (time order, joined by the set separator) → the profile
  without its ``[Average Rating]`` section (that line is computed from ratings, never generated);
* ``item_profile`` — the preference sets of the reviewers that fed an item profile (``source_users``) →
  the profile without its ``[Average Rating]`` section;
* ``rating`` — user profile + item description + item profile (the pair's profile from
  ``item_profile_pairs``) → ``Reasoning: <rationale>\\nPredicted User Rating: <r>``. Valid/test pairs
  have no rationale: their example holds the rating line alone as ``answer`` and the true rating in
  ``meta["rating"]`` (``meta["has_reasoning"]`` is False); evaluation generates from the prompt.

The generation tasks (1–3) are training data only; ``valid``/``test`` hold rating examples. Every row
that cannot become an example (failed or missing upstream annotation, missing review) is counted by
reason in ``report["skipped"]`` — nothing is dropped silently. Task weights resample the training
examples deterministically (``sft.seed``). The ablation (``conf/ablation``) changes the rating prompt only.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from exp3rt.config import (
    STUDENT_TASKS,
    AblationConf,
    ConfigError,
    StudentDataConf,
    check_ablation,
    check_student_data,
)
from exp3rt.data.problems import InputProblems
from exp3rt.data.release import read_rating_file, strip_average_section
from exp3rt.data.schema import describe_item, round_rating
from exp3rt.student.prompts import StudentPrompts, load_student_prompt
from exp3rt.student.ratings import RatingTokens

log = logging.getLogger(__name__)

PARTS = ("train", "valid", "test")


@dataclass
class SFTExample:
    task: str
    system: str
    user: str
    answer: str
    meta: dict[str, Any] = field(
        default_factory=dict
    )  # ids, rating, split; "cut_spans": shortenable parts of `user`


class ExampleSet(dict):
    """``{"train": [...], "valid": [...], "test": [...]}`` plus ``report``: counts per split and task,
    skipped rows by task and reason, and the task weights applied."""

    def __init__(self, parts: dict[str, list[SFTExample]], report: dict):
        super().__init__(parts)
        self.report = report


def strip_average(profile: str) -> str:
    """A profile without its ``[Average Rating]`` section (header and its number), in any header form the
    release's profiles use (``**[Average Rating]**``, ``Average Rating: 7.5``): the ``avg_rating=false``
    ablation must not leak the average through a decorated header."""
    return strip_average_section(profile)


def _average_block(average: float | None) -> str:
    return "" if average is None else f"\n\n[Average Rating]\n{average:.1f}"


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def _read(directory: Path, stage: str, needed_by: str) -> pd.DataFrame:
    path = directory / f"{stage}.parquet"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the student's '{needed_by}' task needs the teacher's {stage} "
            f"stage (exp3rt-annotate stage={stage})"
        )
    return pd.read_parquet(path)


def _to_conf(cfg, schema):
    if cfg is None:
        return OmegaConf.structured(schema)
    return OmegaConf.merge(OmegaConf.structured(schema), cfg)


class _Builder:
    def __init__(
        self,
        directory: Path,
        split,
        items: pd.DataFrame,
        domain: str,
        ratings: RatingTokens,
        cfg,
        ablation,
        prompts: StudentPrompts,
    ):
        self.dir = directory
        self.split = split
        self.domain = domain
        self.ratings = ratings
        self.cfg = cfg
        self.ab = ablation
        self.prompts = prompts
        self.item_rows = {r["item_id"]: r for r in items.to_dict("records")}
        self.skipped: dict[str, Counter] = defaultdict(Counter)
        train = split.train
        self.train_reviews = {
            (u, i): (s, r)
            for u, i, s, r in zip(train.user_id, train.item_id, train.summary, train.review, strict=True)
        }
        self._extract: pd.DataFrame | None = None
        self._context: dict | None = None

    # ------------------------------------------------------------------ shared inputs

    def extract_frame(self, needed_by: str) -> pd.DataFrame:
        if self._extract is None:
            self._extract = _read(self.dir, "extract", needed_by)
        return self._extract

    def ok_sets(self, needed_by: str) -> dict[tuple[str, str], str]:
        ex = self.extract_frame(needed_by)
        ok = ex[ex["status"] == "ok"]
        return dict(zip(zip(ok.user_id, ok.item_id, strict=True), ok.preference_set, strict=True))

    def example(self, task: str, system: str, user, answer: str, **meta) -> SFTExample:
        return SFTExample(
            task,
            system,
            user.text,
            answer,
            {**meta, "cut_spans": [list(s) for s in user.spans], "prompt_version": self.prompts.version},
        )

    # ------------------------------------------------------------------ tasks 1-3

    def extract(self) -> list[SFTExample]:
        out = []
        ex = self.extract_frame("extract")
        ratings = dict(
            zip(
                zip(self.split.train.user_id, self.split.train.item_id, strict=True),
                self.split.train.rating,
                strict=True,
            )
        )
        for row in ex.itertuples(index=False):
            if row.status != "ok" or not _text(row.preference_set):
                self.skipped["extract"][str(row.status) if row.status != "ok" else "empty_answer"] += 1
                continue
            found = self.train_reviews.get((row.user_id, row.item_id))
            if found is None:
                self.skipped["extract"]["review_not_in_train"] += 1
                continue
            summary, review = found
            if not _text(review) or not review.strip():
                self.skipped["extract"]["empty_review"] += 1
                continue
            system, user = self.prompts.messages(
                "extract",
                review=review,
                summary=_text(summary) or "",
                rating=self.ratings.to_text(ratings[(row.user_id, row.item_id)]),
            )
            out.append(
                self.example(
                    "extract", system, user, row.preference_set, user_id=row.user_id, item_id=row.item_id
                )
            )
        return out

    def _profile_task(self, task: str, frame: pd.DataFrame, inputs) -> list[SFTExample]:
        out, seen = [], set()
        for row in frame.to_dict("records"):
            if row["status"] != "ok" or not _text(row["profile"]):
                self.skipped[task][str(row["status"]) if row["status"] != "ok" else "empty_answer"] += 1
                continue
            sets, meta, problem = inputs(row)
            if problem:
                self.skipped[task][problem] += 1
                continue
            system, user = self.prompts.messages(task, preference_sets=self.prompts.set_separator.join(sets))
            answer = strip_average(row["profile"])
            if (user.text, answer) in seen:  # e.g. two target users whose similar neighbours coincide
                self.skipped[task]["duplicate"] += 1
                continue
            seen.add((user.text, answer))
            out.append(self.example(task, system, user, answer, n_sets=len(sets), **meta))
        return out

    def user_profile(self) -> list[SFTExample]:
        frame = _read(self.dir, "user_profile", "user_profile")
        good = self.extract_frame("user_profile")
        good = good[good["status"] == "ok"].merge(
            self.split.train[["user_id", "item_id", "timestamp"]], on=["user_id", "item_id"], how="left"
        )
        good = good.sort_values(["user_id", "timestamp", "item_id"], kind="stable")  # the teacher's order
        by_user = {u: g["preference_set"].tolist() for u, g in good.groupby("user_id", sort=False)}

        def inputs(row):
            sets = by_user.get(row["user_id"], [])
            return sets, {"user_id": row["user_id"]}, None if sets else "no_preference_sets"

        return self._profile_task("user_profile", frame, inputs)

    def item_profile(self) -> list[SFTExample]:
        frame = _read(self.dir, "item_profile", "item_profile")
        set_of = self.ok_sets("item_profile")
        has_sources = "source_users" in frame.columns

        def inputs(row):
            target = _text(row.get("target_user"))
            meta = {"item_id": row["item_id"], "target_user": target}
            if not has_sources or row["source_users"] is None:
                return [], meta, "no_source_users"
            keys = [(u, row["item_id"]) for u in row["source_users"]]
            if not keys:
                return [], meta, "no_preference_sets"
            if any(k not in set_of for k in keys):
                return [], meta, "source_set_missing"
            return [set_of[k] for k in keys], meta, None

        return self._profile_task("item_profile", frame, inputs)

    # ------------------------------------------------------------------ task 4

    def rating_context(self) -> dict:
        """Profiles, pair → item-profile job map and review orders that rating prompts are built from
        (read once per builder: the rating and rating_direct tasks share them)."""
        if self._context is None:
            self._context = self._read_rating_context()
        return self._context

    def _read_rating_context(self) -> dict:
        ab = self.ab
        need_profiles = not ab.raw_reviews
        # without reasoning the student needs no teacher rationale: the train pairs come from the split
        # (e.g. the EXP3RT IMDB release, which publishes profiles but no rationales)
        has_rationale = (self.dir / "rationale.parquet").is_file()
        rationale = _read(self.dir, "rationale", "rating") if ab.reasoning or has_rationale else None
        uprof, iprof, job_of, sources = {}, {}, {}, {}
        if need_profiles or ab.item_profile:
            items = _read(self.dir, "item_profile", "rating")
            pairs = _read(self.dir, "item_profile_pairs", "rating")
            for r in items.to_dict("records"):
                key = (r["item_id"], _text(r.get("target_user")))
                iprof[key] = _text(r["profile"])
                if "source_users" in r and r["source_users"] is not None:
                    sources[key] = list(r["source_users"])
            job_of = {
                (u, i): (ji, _text(ju))
                for u, i, ji, ju in zip(
                    pairs.user_id, pairs.item_id, pairs.job_item, pairs.job_user, strict=True
                )
            }
        if need_profiles and ab.user_profile:
            users = _read(self.dir, "user_profile", "rating")
            uprof = dict(zip(users.user_id, [_text(p) for p in users.profile], strict=True))
        train = self.split.train
        self.user_sum = train.groupby("user_id")["rating"].agg(["sum", "count"])
        self.item_sum = train.groupby("item_id")["rating"].agg(["sum", "count"])
        self.own = dict(zip(zip(train.user_id, train.item_id, strict=True), train.rating, strict=True))
        by_user = (
            train.sort_values(["timestamp", "item_id"], kind="stable")
            .groupby("user_id")["item_id"]
            .agg(list)
            .to_dict()
        )
        by_item = (
            (
                train.sort_values(["helpful_votes", "timestamp"], ascending=[False, True], kind="stable")
                .groupby("item_id")["user_id"]
                .agg(list)
                .to_dict()
            )
            if "helpful_votes" in train
            else train.groupby("item_id")["user_id"].agg(list).to_dict()
        )
        return {
            "uprof": uprof,
            "iprof": iprof,
            "job_of": job_of,
            "sources": sources,
            "by_user": by_user,
            "by_item": by_item,
            "rationale": rationale,
        }

    def rating(self) -> dict[str, list[SFTExample]]:
        ctx = self.rating_context()
        rationale = ctx["rationale"]
        train = self.split.train
        out: dict[str, list[SFTExample]] = {p: [] for p in PARTS}
        done = set()
        if rationale is None:
            return self._rating_from_split(out, ctx, ("train", "valid", "test"), done)
        part_of = self.part_of()
        for row in rationale.to_dict("records"):
            pair = (row["user_id"], row["item_id"])
            # the split decides where a pair belongs, never the label an annotation row carries (the EXP3RT
            # release labels its rationales by its own files: under another split they would be scored
            # although the student trained on them)
            split, warm = part_of.get(pair, (None, None))
            if split is None:
                self.skipped["rating"]["rationale_pair_not_in_split"] += 1
                continue
            if row["status"] != "ok" or not _text(row["rationale"]):
                self.skipped["rating"][f"{split}:rationale_{row['status']}"] += 1
                continue
            given = {
                "user_profile": _text(row.get("user_profile")),
                "item_profile": _text(row.get("item_profile")),
            }
            ex = self._rating_example(
                pair, float(row["rating"]), split, row["rationale"], ctx, given, warm=warm
            )
            if ex is not None:
                out[split].append(ex)
                done.add(pair)
        annotated = set(zip(rationale.user_id, rationale.item_id, strict=True))
        # e.g. annotation.max_rationale_pairs capped the teacher's work
        unannotated = sum(p not in annotated for p in zip(train.user_id, train.item_id, strict=True))
        if unannotated:
            self.skipped["rating"]["train:no_rationale_row"] += unannotated
        return self._rating_from_split(out, ctx, ("valid", "test"), done)

    def part_of(self) -> dict[tuple[str, str], tuple[str, bool | None]]:
        """Each pair of the split: ``(part, warm)`` (warm is None for training pairs)."""
        out = {}
        for name in PARTS:
            frame = self.split.part(name)
            warm = frame["warm"].tolist() if "warm" in frame else [None] * len(frame)
            out.update(
                {
                    pair: (name, w)
                    for pair, w in zip(zip(frame.user_id, frame.item_id, strict=True), warm, strict=True)
                }
            )
        return out

    def rating_direct(self) -> list[SFTExample]:
        """Task ``rating_direct``: every training pair once in the rating-only form (the rating-only
        instruction, answer "Predicted User Rating: r"), the inputs as the ablation shows them; skips count
        under ``rating_direct``. Under an ablation without reasoning the rating task already is this form,
        so it adds nothing (logged): a sweep over ablations can keep one ``sft.tasks``."""
        if not self.ab.reasoning:
            log.info(
                "student rating_direct: ablation %s has no reasoning, so the rating task already is the "
                "rating-only form; rating_direct adds no examples",
                self.ab.name,
            )
            return []
        out = self._rating_from_split(
            {p: [] for p in PARTS},
            self.rating_context(),
            ("train",),
            set(),
            ablation=direct_ablation(self.ab),
            task="rating_direct",
        )
        return out["train"]

    def _rating_from_split(
        self, out: dict, ctx: dict, splits: tuple[str, ...], done: set, ablation=None, task: str = "rating"
    ) -> dict:
        """Rating examples with no rationale (the rating line alone) for the split's pairs not in ``done``;
        ``ablation`` (default: the builder's) decides the inputs and the instruction."""
        for split in splits:
            frame = self.split.part(split)
            for r in frame.to_dict("records"):
                pair = (r["user_id"], r["item_id"])
                if pair in done:
                    continue
                ex = self._rating_example(
                    pair,
                    float(r["rating"]),
                    split,
                    None,
                    ctx,
                    {},
                    warm=bool(r["warm"]) if "warm" in r else None,
                    ablation=ablation,
                    task=task,
                )
                if ex is not None:
                    out[split].append(ex)
        return out

    def _average(self, table: pd.DataFrame, key: str, own: float | None) -> float | None:
        if key not in table.index:
            return None
        s, c = float(table.at[key, "sum"]), int(table.at[key, "count"])
        if own is not None:  # leave the target pair's own rating out
            s, c = s - own, c - 1
        return None if c <= 0 else round_rating(Fraction(s) / c)

    def _reviews(self, keys: list[tuple[str, str]], average: float | None) -> str:
        texts = []
        for k in keys[: int(self.cfg.raw_reviews_max)]:
            summary, review = self.train_reviews[k]
            texts.append(self.prompts.raw_review(_text(summary) or "", _text(review) or ""))
        body = self.prompts.set_separator.join(texts) if texts else self.prompts.no_reviews
        return body + _average_block(average)

    def _rating_example(
        self,
        pair,
        rating: float,
        split: str,
        rationale: str | None,
        ctx: dict,
        given: dict,
        warm: bool | None = None,
        ablation=None,
        task: str = "rating",
    ) -> SFTExample | None:
        ab, (user, item) = ablation if ablation is not None else self.ab, pair
        sections: dict[str, str] = {}
        own = self.own.get(pair)
        job = ctx["job_of"].get(pair)
        if ab.user_profile:
            if ab.raw_reviews:
                keys = [(user, i) for i in ctx["by_user"].get(user, []) if i != item]
                keys = keys[-int(self.cfg.raw_reviews_max) :]  # the most recent ones, in time order
                sections["user_reviews"] = self._reviews(keys, self._average(self.user_sum, user, own))
            else:
                text = given.get("user_profile") or ctx["uprof"].get(user)
                if text is None:
                    self.skipped[task][f"{split}:user_profile_missing"] += 1
                    return None
                sections["user_profile"] = text
        if ab.item_description:
            sections["item_description"] = describe_item(self.item_rows.get(item), self.domain)
        if ab.item_profile:
            if ab.raw_reviews:
                chosen = ctx["sources"].get(job) if job is not None else None
                users = chosen if chosen is not None else ctx["by_item"].get(item, [])
                keys = [(u, item) for u in users if u != user and (u, item) in self.train_reviews]
                sections["item_reviews"] = self._reviews(keys, self._average(self.item_sum, item, own))
            else:
                text = given.get("item_profile") or (ctx["iprof"].get(job) if job is not None else None)
                if text is None:
                    self.skipped[task][f"{split}:item_profile_missing"] += 1
                    return None
                sections["item_profile"] = text
        if not ab.avg_rating:
            sections = {k: (v if k == "item_description" else strip_average(v)) for k, v in sections.items()}
        system, prompt = self.prompts.rating_messages(sections, reasoning=bool(ab.reasoning))
        with_reasoning = bool(ab.reasoning) and rationale is not None
        answer = self.prompts.answer(rating, rationale if with_reasoning else None)
        meta = {
            "user_id": user,
            "item_id": item,
            "rating": rating,
            "rating_text": self.ratings.to_text(rating),
            "split": split,
            "has_reasoning": with_reasoning,
            "ablation": str(ab.name),
        }
        if warm is not None:
            meta["warm"] = warm
        return self.example(task, system, prompt, answer, **meta)


def apply_task_weights(
    examples: list[SFTExample], weights: dict[str, float], seed: int
) -> tuple[list[SFTExample], dict]:
    """Resample each task's examples to ``round(weight * n)``: whole copies, then a seeded sample without
    replacement for the fraction (kept in original order). Weight 1 (the default) leaves a task as it is."""
    by_task: dict[str, list[SFTExample]] = defaultdict(list)
    for ex in examples:
        by_task[ex.task].append(ex)
    out, counts = [], {}
    for t_index, task in enumerate(STUDENT_TASKS):
        items = by_task.get(task, [])
        w = float(weights.get(task, 1.0))
        n = len(items)
        target = int(round(w * n))
        copies, rest = divmod(target, n) if n else (0, 0)
        rng = np.random.default_rng([int(seed), t_index])
        extra = sorted(rng.choice(n, size=rest, replace=False).tolist()) if rest else []
        out += items * copies + [items[i] for i in extra]
        if n:
            counts[task] = {"before": n, "after": target, "weight": w}
    return out, counts


def direct_ablation(ablation):
    """``ablation`` with the reasoning switched off: the prompts and answers of the rating-only form."""
    return OmegaConf.merge(
        OmegaConf.structured(AblationConf), _to_conf(ablation, AblationConf), {"reasoning": False}
    )


def build_examples(
    annotation_dir, split, items: pd.DataFrame, domain: str, scale, cfg, ablation=None, prompt=None
) -> ExampleSet:
    """Every configured task's examples, keyed ``train`` / ``valid`` / ``test``.

    ``split``: a :class:`exp3rt.data.splits.Split` (train/valid/test frames); ``items``: the dataset's
    items table (for :func:`describe_item`); ``scale``: the dataset's rating scale; ``cfg``: the ``sft``
    config (:class:`StudentDataConf`); ``ablation``: :class:`AblationConf` (default ``full``); ``prompt``:
    the ``student_prompt`` config (default ``conf/student_prompt/exp3rt_v1.yaml``).
    """
    cfg = _to_conf(cfg, StudentDataConf)
    ablation = _to_conf(ablation, AblationConf)
    check_student_data(cfg)
    check_ablation(ablation)
    directory = Path(annotation_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"annotation directory {directory} does not exist; run exp3rt-annotate first")
    ratings = RatingTokens.from_config(scale, float(cfg.rating_offset))
    prompts = StudentPrompts(prompt if prompt is not None else load_student_prompt(), domain, ratings)
    builder = _Builder(directory, split, items, domain, ratings, cfg, ablation, prompts)
    parts: dict[str, list[SFTExample]] = {p: [] for p in PARTS}
    for task in cfg.tasks:
        if task == "rating":
            for p, exs in builder.rating().items():
                parts[p] += exs
        elif task in ("extract", "user_profile", "item_profile", "rating_direct"):
            parts["train"] += getattr(builder, task)()
        else:  # check_student_data already refused it; kept for callers that skip validation
            raise ConfigError(f"unknown student task {task!r}; allowed: {list(STUDENT_TASKS)}")
    counts_before = {p: dict(Counter(ex.task for ex in exs)) for p, exs in parts.items()}
    parts["train"], weights = apply_task_weights(parts["train"], dict(cfg.task_weights), int(cfg.seed))
    report = {
        "prompt_version": prompts.version,
        "ablation": str(ablation.name),
        "rating_texts": list(ratings.texts),
        "counts": {p: dict(Counter(ex.task for ex in exs)) for p, exs in parts.items()},
        "counts_before_weights": counts_before,
        "task_weights": weights,
        "skipped": {task: dict(c) for task, c in builder.skipped.items() if c},
    }
    for task, reasons in report["skipped"].items():
        log.warning("student %s: skipped %s", task, reasons)
    return ExampleSet(parts, report)


def candidate_examples(
    annotation_dir, split, items: pd.DataFrame, domain: str, scale, cfg, ablation, prompt, candidates: dict
) -> tuple[dict[str, list[SFTExample]], dict]:
    """Rating prompts for first-stage candidates (``{user: [item, ...]}``), built exactly as the rating
    task's prompts. A candidate is not a rated pair, so its item profile is the item's shared profile
    (the job with no target user); candidates without one are skipped and counted. ``meta["rating"]``
    is None (the answer text is a placeholder that is never used)."""
    cfg = _to_conf(cfg, StudentDataConf)
    ablation = _to_conf(ablation, AblationConf)
    ratings = RatingTokens.from_config(scale, float(cfg.rating_offset))
    prompts = StudentPrompts(prompt if prompt is not None else load_student_prompt(), domain, ratings)
    builder = _Builder(Path(annotation_dir), split, items, domain, ratings, cfg, ablation, prompts)
    ctx = builder.rating_context()
    out: dict[str, list[SFTExample]] = {}
    for user, cands in candidates.items():
        rows = []
        for item in cands:
            pair = (user, item)
            if pair not in ctx["job_of"] and (item, None) in ctx["iprof"]:
                ctx["job_of"][pair] = (item, None)
            ex = builder._rating_example(pair, float(scale.min), "candidate", None, ctx, {})
            if ex is not None:
                ex.meta["rating"] = None
                rows.append(ex)
        out[user] = rows
    return out, {task: dict(c) for task, c in builder.skipped.items() if c}


def rating_file_examples(
    path,
    domain: str,
    scale,
    cfg,
    ablation,
    prompt,
    strict: bool = True,
    strict_key: str = "eval.test_file_strict",
) -> tuple[list[SFTExample], dict]:
    """Rating prompts for a given test file in the EXP3RT release format (user_persona, item_synopsis,
    item_description, score), with the same templates and ablation switches as training. The file's
    profiles are used as they are; ``raw_reviews`` cannot apply (the file has no reviews). ``strict=False``
    skips bad records and counts them in the returned report; ``meta["warm"]`` is left to the caller,
    which knows the training data."""
    cfg = _to_conf(cfg, StudentDataConf)
    ab = _to_conf(ablation, AblationConf)
    if ab.raw_reviews:
        raise ConfigError(
            f"ablation '{ab.name}' shows raw reviews, which a release rating file does not carry"
        )
    ratings = RatingTokens.from_config(scale, float(cfg.rating_offset))
    prompts = StudentPrompts(prompt if prompt is not None else load_student_prompt(), domain, ratings)
    problems = InputProblems(strict=strict, strict_key=strict_key)
    frame = read_rating_file(path, scale, problems)
    out = []
    for r in frame.to_dict("records"):
        sections: dict[str, str] = {}
        if ab.user_profile:
            sections["user_profile"] = r["user_profile"]
        if ab.item_description:
            sections["item_description"] = r["item_description"]
        if ab.item_profile:
            sections["item_profile"] = r["item_profile"]
        if not ab.avg_rating:
            sections = {k: (v if k == "item_description" else strip_average(v)) for k, v in sections.items()}
        system, user = prompts.rating_messages(sections, reasoning=bool(ab.reasoning))
        rating = float(r["rating"])
        out.append(
            SFTExample(
                "rating",
                system,
                user.text,
                prompts.answer(rating, None),
                {
                    "user_id": str(r["user_id"]),
                    "item_id": str(r["item_id"]),
                    "rating": rating,
                    "rating_text": ratings.to_text(rating),
                    "split": "test",
                    "has_reasoning": False,
                    "ablation": str(ab.name),
                    "cut_spans": [list(s) for s in user.spans],
                    "prompt_version": prompts.version,
                },
            )
        )
    return out, {"file": str(path), "records": len(frame), **problems.to_dict()}
