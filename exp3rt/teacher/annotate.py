"""Run the annotation stages for a prepared split and write their artifacts.

Layout: ``<artifacts>/annotations/<dataset>-<split fp>/<teacher.name>-<fp>/`` with one file set per
stage (see :mod:`exp3rt.teacher.stages`) plus ``meta.json`` / ``config.yaml``. The directory's
fingerprint covers the split, the teacher's identity and sampling, the prompt texts and the annotation
settings — so a changed prompt or model gets a new directory, while the answer cache (one sqlite file
for all runs, content-addressed) still saves every call that is identical.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from exp3rt.artifacts import (
    fingerprint,
    intact,
    save_config,
    to_container,
    write_json_atomic,
    write_meta,
    write_parquet_atomic,
)
from exp3rt.config import ConfigError, TeacherBackendName
from exp3rt.data.prepare import PreparedData
from exp3rt.data.release import split_profile
from exp3rt.data.splits import Split
from exp3rt.locks import file_lock
from exp3rt.teacher.backends.base import TeacherError
from exp3rt.teacher.backends.extractive import ExtractiveBackend
from exp3rt.teacher.backends.hf_backend import HFBackend
from exp3rt.teacher.cache import AnswerCache
from exp3rt.teacher.client import TeacherClient
from exp3rt.teacher.prompts import Prompts
from exp3rt.teacher.spend import SPEND_FILE, SpendLedger
from exp3rt.teacher.stages import (
    RETRY_STEP,
    STAGE_ORDER,
    AnnotationContext,
    StageRunner,
    extract_frame,
    extract_works,
    failed_row_keys,
    run_item_profiles,
    run_rationales,
    run_user_profiles,
    write_failures,
)

log = logging.getLogger(__name__)

TEACHER_IDENTITY_KEYS = (
    "backend",
    "model",
    "base_url",
    "temperature",
    "max_tokens",
    "top_p",
    "seed",
    "model_path",
    "repair_retries",
)


@dataclass
class AnnotationPlan:
    directory: Path
    fingerprint: str
    stages: list[str]


@dataclass(frozen=True)
class AnnotateOptions:
    """How one annotation run goes (:func:`annotate`'s keyword arguments; exp3rt-annotate's config keys of
    the same names). None of them is in the directory's fingerprint."""

    stage: str = "all"
    dry_run: bool = False
    shard: int = 0
    num_shards: int = 1
    merge: bool = False
    force: bool = False
    retry_failed: bool = False
    progress: bool = True
    lock_wait: bool = True


def teacher_identity(teacher_cfg) -> dict:
    return {k: to_container(teacher_cfg.get(k)) for k in TEACHER_IDENTITY_KEYS}


def annotation_dir(cfg, split: Split, prompts: Prompts) -> tuple[Path, str]:
    fp = fingerprint(
        "annotations",
        split.fingerprint,
        teacher_identity(cfg.teacher),
        {
            s: prompts.version(s)
            for s in ("extract", "user_profile", "item_profile", "rationale", "consistency")
        },
        cfg.annotation,
    )
    root = Path(cfg.paths.artifacts_dir) / "annotations" / f"{cfg.dataset.name}-{split.fingerprint[:12]}"
    return root / f"{cfg.teacher.name}-{fp[:12]}", fp


def find_annotation_dir(cfg, prepared, split) -> Path:
    """The teacher artifacts this student learns from: ``annotations_dir`` when given, else the
    directory ``exp3rt-annotate`` writes for the same dataset, split, teacher, prompt and annotation
    settings."""
    if cfg.get("annotations_dir"):
        path = Path(cfg.annotations_dir)
        if not path.is_dir():
            raise FileNotFoundError(f"annotations_dir does not exist: {path}")
        return path
    prompts = Prompts.for_run(cfg)
    path, _ = annotation_dir(cfg, split, prompts)
    stages = (
        ("user_profile", "item_profile", "rationale")
        if cfg.ablation.reasoning
        else ("user_profile", "item_profile")
    )
    needed = [s for s in stages if not (path / f"{s}.parquet").is_file()]
    if needed:
        raise FileNotFoundError(
            f"no teacher annotations for this dataset/split/teacher in {path} (missing: "
            f"{', '.join(needed)}): "
            f"run exp3rt-annotate with the same dataset, split and teacher first, or pass annotations_dir=..."
        )
    return path


def stage_file(directory: Path, stage: str, shard: int, num_shards: int, suffix: str = "parquet") -> Path:
    if num_shards > 1:
        return directory / f"{stage}.shard-{shard}-of-{num_shards}.{suffix}"
    return directory / f"{stage}.{suffix}"


def check_run_options(
    stage: str = "all", shard: int = 0, num_shards: int = 1, merge: bool = False
) -> list[str]:
    """The stages one run covers, after checking its ``stage``/``shard``/``num_shards``/``merge``."""
    stage = str(stage)
    allowed = ("all", *STAGE_ORDER)
    if stage not in allowed:
        raise ConfigError(f"config key 'stage': '{stage}' is not one of {list(allowed)}")
    n, i = int(num_shards), int(shard)
    if n < 1 or not 0 <= i < n:
        raise ConfigError(
            f"config keys 'shard'/'num_shards': need 0 <= shard < num_shards (got shard={i}, num_shards={n})"
        )
    if stage == "all" and n > 1:
        raise ConfigError(
            "stage=all runs the stages in order and each needs the whole previous stage; with num_shards > 1 "
            "run one stage at a time (stage=extract shard=0..n-1, then stage=extract merge=true, then "
            "the next stage)"
        )
    if merge and stage == "all":
        raise ConfigError("merge=true needs a single stage, e.g. stage=extract merge=true num_shards=4")
    return list(STAGE_ORDER) if stage == "all" else [stage]


def build_backend(teacher_cfg, dry_run: bool = False):
    backend = TeacherBackendName(teacher_cfg.backend)
    if backend == TeacherBackendName.openai:
        # heavy: openai
        from exp3rt.teacher.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(teacher_cfg, require_key=not dry_run)  # pricing a run needs no key
    if backend == TeacherBackendName.hf:
        return HFBackend(teacher_cfg)
    if backend == TeacherBackendName.extractive:
        return ExtractiveBackend(teacher_cfg)
    raise ConfigError("teacher.backend=release makes no calls; it is handled by import_release()")


def _read(directory: Path, stage: str) -> pd.DataFrame:
    path = directory / f"{stage}.parquet"
    if not path.is_file():
        shards = sorted(directory.glob(f"{stage}.shard-*.parquet"))
        hint = " and merge its shards (merge=true)" if shards else ""
        raise FileNotFoundError(f"{path} is missing: run stage={stage} first{hint}")
    if not intact(path, f"stage {stage} (rerun stage={stage}; answers still cached are reused)"):
        raise ConfigError(
            f"{path} is damaged (see the warning above): rebuild it with stage={stage} "
            f"(or stage=all), which reuses the teacher's cached answers"
        )
    return pd.read_parquet(path)


def merge_shards(directory: Path, stage: str, num_shards: int) -> Path:
    """Join ``<stage>.shard-i-of-n.parquet`` for every i into ``<stage>.parquet`` (all shards required)."""
    paths = [stage_file(directory, stage, i, num_shards) for i in range(num_shards)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"cannot merge {stage}: shard files missing in {directory}: {missing}")
    damaged = [p.name for p in paths if not intact(p, "its shard")]
    if damaged:
        raise ConfigError(
            f"cannot merge {stage}: shard files damaged in {directory}: {damaged}; rerun those shards "
            f"(stage={stage} shard=<i> num_shards={num_shards}; cached answers are reused), then merge"
        )
    frame = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    records = [
        read_inputs(stage_file(directory, stage, i, num_shards, "inputs.json")) for i in range(num_shards)
    ]
    if all(r is not None for r in records):
        digests = {json.dumps(r["inputs"], sort_keys=True) for r in records}
        if len(digests) > 1:
            raise ConfigError(
                f"cannot merge {stage}: its shards were built from different versions of "
                f"{sorted(records[0]['inputs'])} in {directory}; rerun every shard with force=true "
                f"(stage={stage} shard=<i> num_shards={num_shards} force=true), then merge"
            )
        bases: dict = {}
        for r in records:
            bases.update(r.get("attempt_base", {}))
    write_parquet_atomic(frame, directory / f"{stage}.parquet")
    if all(
        r is not None for r in records
    ):  # after the stage file: a crash between leaves it looking stale, not fresh
        write_json_atomic(
            directory / f"{stage}.inputs.json",
            {"stage": stage, "inputs": records[0]["inputs"], "attempt_base": bases},
            default=None,
        )
    extra = directory / f"{stage}_pairs.shard-0-of-{num_shards}.parquet"
    if extra.is_file():  # the pair → item-profile map is the same in every shard
        write_parquet_atomic(pd.read_parquet(extra), directory / f"{stage}_pairs.parquet")
    usages = [
        json.loads(stage_file(directory, stage, i, num_shards, "usage.json").read_text())
        for i in range(num_shards)
        if stage_file(directory, stage, i, num_shards, "usage.json").is_file()
    ]
    summed: dict = {}
    for u in usages:
        for k, v in u.get("usage", {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                summed[k] = summed.get(k, 0) + v
    write_json_atomic(
        directory / f"{stage}.usage.json",
        {"stage": stage, "merged_shards": num_shards, "usage": summed, "rows": len(frame)},
        default=None,
    )
    return directory / f"{stage}.parquet"


def stage_inputs(cfg, stage: str) -> list[str]:
    """The stage files a stage is built from (their digests are recorded beside it)."""
    if stage == "user_profile":
        return ["extract.parquet"]
    if stage == "item_profile":
        extra = ["user_profile.parquet"] if str(cfg.annotation.similarity) == "profile_embedding" else []
        return ["extract.parquet", *extra]
    if stage == "rationale":
        return ["user_profile.parquet", "item_profile.parquet", "item_profile_pairs.parquet"]
    return []


def file_digest(path: Path) -> str | None:
    """sha256 of a file's bytes (None when it does not exist)."""
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_inputs(path: Path) -> dict | None:
    """The input digests a stage file recorded (None when missing or damaged, with a warning)."""
    return json.loads(path.read_text()) if intact(path, "the stage beside it") else None


def changed_inputs(directory: Path, recorded: dict | None, names: list[str]) -> list[str]:
    """Which of ``names`` differ from the digests a stage file recorded when it was built."""
    if recorded is None:
        return []
    was = recorded.get("inputs", {})
    return [n for n in names if was.get(n) != file_digest(directory / n)]


def stale_stages(cfg, directory: Path, stages: list[str]) -> dict[str, list[str]]:
    """The stages in ``stages`` whose merged file exists but was built from stage files that changed since."""
    out = {}
    for stage in stages:
        if (directory / f"{stage}.parquet").is_file():
            changed = changed_inputs(
                directory, read_inputs(directory / f"{stage}.inputs.json"), stage_inputs(cfg, stage)
            )
            if changed:
                out[stage] = changed
    return out


def rerun_command(stage: str) -> str:
    """This run's command line with ``stage=<stage>`` (its other overrides kept), for pasting."""
    try:
        from hydra.core.hydra_config import HydraConfig

        task = list(HydraConfig.get().overrides.task)
    except Exception:  # noqa: BLE001 - not under Hydra (a library call)
        return f"exp3rt-annotate <your overrides> stage={stage}"
    drop = {"stage", "force", "retry_failed", "shard", "num_shards", "merge"}
    keep = [o for o in task if o.split("=", 1)[0].lstrip("+~") not in drop]
    return shlex.join(["exp3rt-annotate", *keep, f"stage={stage}"])


def _summary(frame: pd.DataFrame) -> dict:
    counts = frame["status"].value_counts().to_dict() if len(frame) else {}
    return {"rows": int(len(frame)), "status": {str(k): int(v) for k, v in counts.items()}}


async def run_stages(
    cfg,
    prepared: PreparedData,
    split: Split,
    client,
    backend,
    stages: list[str],
    directory: Path,
    opts: AnnotateOptions,
) -> dict:
    prompts = Prompts.for_run(cfg)
    n, i = opts.num_shards, opts.shard
    retry_failed = opts.retry_failed
    ctx = AnnotationContext(
        split.train,
        split.valid,
        split.test,
        prepared.dataset.items,
        prepared.dataset.scale,
        str(cfg.dataset.domain),
        cfg.annotation,
        shard=i,
        num_shards=n,
        aspect_lexicon=prompts.aspect_lexicon,
    )
    if prompts.aspect_lexicon and "extract" in stages and str(cfg.teacher.backend) != "extractive":
        raise ConfigError(
            f"prompt.aspect_lexicon is applied by the extractive teacher only; teacher.backend="
            f"{cfg.teacher.backend} names aspects as its prompt asks (write the names into "
            "prompt.extract.user), so drop it: prompt.aspect_lexicon=null"
        )
    if cfg.dataset.get("require_review") is False and "extract" in stages:
        if split.train["review"].isna().all():
            raise ConfigError(
                f"dataset '{cfg.dataset.name}' has no review text to extract preferences from; "
                "use teacher=release to import published annotations, or a dataset with reviews"
            )
    # a stage this run only reads must not be stale itself: it is not rebuilt here, so stop and say how
    upstream = sorted(
        {
            name.removesuffix(".parquet").removesuffix("_pairs")
            for st in stages
            for name in stage_inputs(cfg, st)
        }
        - set(stages),
        key=STAGE_ORDER.index,
    )
    stale = stale_stages(cfg, directory, upstream)
    if stale:
        what = "; ".join(
            f"{st}.parquet was built from {', '.join(ch)}, which changed since" for st, ch in stale.items()
        )
        fix = (
            "stage=all rebuilds every stale stage in order, reusing cached answers: " + rerun_command("all")
            if n == 1
            else f"rebuild {next(iter(stale))} first (its shards, then merge=true)"
        )
        raise ConfigError(f"stage={','.join(stages)} would read stale input: {what}. {fix}")
    report: dict = {}
    for stage in stages:
        out = stage_file(directory, stage, i, n)
        inputs_path = stage_file(directory, stage, i, n, "inputs.json")
        recorded = read_inputs(inputs_path)
        bases: dict[str, int] = dict((recorded or {}).get("attempt_base", {}))
        why: dict = {}
        usable = False
        if out.is_file() and not opts.force:
            # a damaged stage file, or a damaged record of what built it: rebuilt from the answer cache (a
            # warning names it)
            if inputs_path.is_file() and recorded is None:
                why["rebuilt"] = {"damaged": inputs_path.name}
            elif intact(out, f"stage {stage} from the answer cache (nothing is sent twice)"):
                usable = True
            else:
                why["rebuilt"] = {"damaged": out.name}
        if usable:
            old = pd.read_parquet(out)
            changed = changed_inputs(directory, recorded, stage_inputs(cfg, stage))
            failed_keys = failed_row_keys(stage, old) if retry_failed else []
            if changed:
                log.warning(
                    "stage %s: rebuilding %s: %s changed since it was built (answers still cached are "
                    "reused)",
                    stage,
                    out.name,
                    ", ".join(changed),
                )
                why["rebuilt"] = {"changed_inputs": changed}
            if failed_keys:
                log.warning(
                    "stage %s: retry_failed=true: re-sending the %d failed rows of %s (ok rows come "
                    "from the cache)",
                    stage,
                    len(failed_keys),
                    out.name,
                )
                why["retried_failed"] = len(failed_keys)
            if not changed and not failed_keys:
                n_failed = int((old["status"] == "failed").sum())
                more = (
                    f"; its {n_failed} failed rows are kept (retry_failed=true re-sends them)"
                    if n_failed
                    else ""
                )
                if recorded is None and stage_inputs(cfg, stage):
                    more += (
                        "; it records no input digests (made before they were kept), so it is "
                        "not checked for staleness"
                    )
                log.info("stage %s: %s exists, skipping (force=true to redo)%s", stage, out, more)
                report[stage] = {"skipped": True, **_summary(old)}
                continue
            for (
                key
            ) in failed_keys:  # asked afresh: a new attempt number, so a cached bad answer is not reused
                bases[key] = bases.get(key, 0) + RETRY_STEP
        runner = StageRunner(client, prompts, cfg.teacher, attempt_base=bases, base_stage=stage)
        t0 = time.perf_counter()
        before = client.usage_summary()
        pair_map = None
        if stage == "extract":
            frame = extract_frame(await runner.run("extract", extract_works(ctx)))
        elif stage == "user_profile":
            frame = await run_user_profiles(runner, ctx, _read(directory, "extract"), backend.count_tokens)
        elif stage == "item_profile":
            uprof = None
            if str(cfg.annotation.similarity) == "profile_embedding":
                uprof = _read(directory, "user_profile")
            frame, pair_map = await run_item_profiles(
                runner, ctx, _read(directory, "extract"), uprof, backend.count_tokens
            )
        else:
            frame = await run_rationales(
                runner,
                ctx,
                _read(directory, "user_profile"),
                _read(directory, "item_profile"),
                _read(directory, "item_profile_pairs"),
            )
        digests = {name: file_digest(directory / name) for name in stage_inputs(cfg, stage)}
        write_parquet_atomic(frame, out)
        if pair_map is not None:
            write_parquet_atomic(pair_map, stage_file(directory, "item_profile_pairs", i, n))
        write_json_atomic(
            inputs_path, {"stage": stage, "inputs": digests, "attempt_base": bases}, default=None
        )
        failures = write_failures(frame, stage_file(directory, stage, i, n, "failures.jsonl"))
        after = client.usage_summary()
        usage = {
            k: (after[k] - before.get(k, 0))
            if isinstance(after[k], int | float) and not isinstance(after[k], bool)
            else after[k]
            for k in after
        }
        summary = {
            "stage": stage,
            "shard": i,
            "num_shards": n,
            **why,
            **_summary(frame),
            "failures": failures,
            "seconds": round(time.perf_counter() - t0, 2),
            "usage": usage,
        }
        write_json_atomic(stage_file(directory, stage, i, n, "usage.json"), summary)
        report[stage] = summary
        log.info("stage %s: %s", stage, summary["status"])
    return report


def estimate_stages(
    cfg,
    prepared: PreparedData,
    split: Split,
    client,
    backend,
    stages: list[str],
    directory: Path,
    opts: AnnotateOptions,
) -> dict:
    """Dry run: calls, tokens and cost per stage, calling nothing. Extraction prompts are exact; later
    stages depend on earlier answers, so their prompts are estimated from typical preference-set sizes
    (or measured ones when the extract stage is already done)."""
    prompts = Prompts.for_run(cfg)
    runner = StageRunner(client, prompts, cfg.teacher)
    ctx = AnnotationContext(
        split.train,
        split.valid,
        split.test,
        prepared.dataset.items,
        prepared.dataset.scale,
        str(cfg.dataset.domain),
        cfg.annotation,
        shard=opts.shard,
        num_shards=opts.num_shards,
        aspect_lexicon=prompts.aspect_lexicon,
    )
    out: dict = {}
    set_tokens = 60.0
    if (directory / "extract.parquet").is_file():
        done = pd.read_parquet(directory / "extract.parquet")
        ok = done[done["status"] == "ok"]["preference_set"]
        if len(ok):
            set_tokens = float(ok.map(backend.count_tokens).mean())
    for stage in stages:
        if stage == "extract":
            est = client.estimate(runner.first_requests("extract", extract_works(ctx)))
            out[stage] = est
            continue
        if stage == "user_profile":
            sizes = ctx.train.groupby("user_id").size()
            calls = int(
                sum(
                    1 + (s > cfg.annotation.user_max_sets) * (-(-s // cfg.annotation.user_max_sets))
                    for s in sizes
                )
            )
            prompt_tokens = float(
                sizes.clip(upper=cfg.annotation.user_max_sets).sum() * set_tokens + 150 * calls
            )
        elif stage == "item_profile":
            sizes = ctx.train.groupby("item_id").size().clip(upper=cfg.annotation.item_max_reviews)
            pairs = len(ctx.rationale_pairs()) + len(ctx.eval_pairs())
            per_pair = str(cfg.annotation.item_policy) == "similar_users"
            calls = int(pairs if per_pair else len(sizes) + len(ctx.rationale_pairs()))
            k = cfg.annotation.item_k if per_pair else float(sizes.mean())
            prompt_tokens = float(calls * (k * set_tokens + 150))
        else:
            calls = len(ctx.rationale_pairs()) * (2 if cfg.annotation.consistency_check else 1)
            prompt_tokens = float(calls * (2 * 5 * 12 + 120 + 250))
        completion = float(calls * int(cfg.teacher.max_tokens))
        out[stage] = {
            "calls": calls,
            "cached": None,
            "prompt_tokens": int(prompt_tokens),
            "completion_tokens": int(completion),
            "cost_usd": client.cost(prompt_tokens, completion),
            "price_mode": client.mode,
            "estimated": True,
        }
    # both modes side by side: one HTTP call per request, or the Batch API (sync price x price_factor, within
    # 24 h)
    factor = float(cfg.teacher.batch.price_factor) if "batch" in cfg.teacher else 0.5
    for e in out.values():
        sync = client.sync_cost(e["prompt_tokens"], e["completion_tokens"])
        e["cost_usd_sync"], e["cost_usd_batch"] = sync, sync * factor
        e["batch_time"] = "within 24 h per batch round"
    return out


def import_release(cfg, prepared: PreparedData, split: Split, directory: Path) -> dict:
    """teacher=release: write the EXP3RT release's published profiles and rationales as this
    framework's user_profile / item_profile / rationale artifacts (no preference sets: the release has
    none per review)."""
    extras = prepared.dataset.extras
    if "pair_profiles" not in extras:
        raise ConfigError(
            "teacher=release needs a dataset loaded with loader=exp3rt_release (e.g. dataset=release_imdb)"
        )
    pp = extras["pair_profiles"]
    users = extras["user_profiles"].rename(columns={"id": "user_id"})
    user_frame = pd.DataFrame(
        {
            "user_id": users["user_id"].astype(str),
            "status": "ok",
            "profile": users["profile"].astype(str),
            "likes": users["likes"],
            "dislikes": users["dislikes"],
            "average": users["average"].astype("float64"),
            "n_sets": pd.NA,
            "raw": None,
            "problem": None,
        }
    )
    # the release gives each record its own item synopsis (selected for that target user): one job per pair

    parsed = [split_profile(t) for t in pp["item_profile"]]
    item_frame = pd.DataFrame(
        {
            "item_id": pp["item_id"].astype(str),
            "target_user": pp["user_id"].astype(str),
            "status": "ok",
            "profile": pp["item_profile"].astype(str),
            "likes": [p[0] for p in parsed],
            "dislikes": [p[1] for p in parsed],
            "average": [p[2] for p in parsed],
            "n_sets": pd.NA,
            "raw": None,
            "problem": None,
        }
    ).drop_duplicates(["item_id", "target_user"])
    pair_map = pd.DataFrame(
        {
            "user_id": pp["user_id"].astype(str),
            "item_id": pp["item_id"].astype(str),
            "job_item": pp["item_id"].astype(str),
            "job_user": pp["user_id"].astype(str),
        }
    )
    directory.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(user_frame, directory / "user_profile.parquet")
    write_parquet_atomic(item_frame, directory / "item_profile.parquet")
    write_parquet_atomic(pair_map, directory / "item_profile_pairs.parquet")
    report = {
        "user_profile": {"rows": len(user_frame), "imported": True},
        "item_profile": {"rows": len(item_frame), "imported": True},
    }
    if "rationales" in extras:
        # the release labels each rationale by the file it came from; this run's split decides the part
        rat = (
            extras["rationales"]
            .merge(pp, on=["user_id", "item_id", "split"], how="left")
            .drop(columns="split")
        )
        ratings = pd.concat(
            [
                part[["user_id", "item_id", "rating"]].assign(split=name)
                for name, part in (("train", split.train), ("valid", split.valid), ("test", split.test))
            ]
        )
        rat = rat.merge(ratings, on=["user_id", "item_id"], how="inner")
        frame = rat.assign(status="ok", raw=None, problem=None, attempts=0)
        write_parquet_atomic(frame, directory / "rationale.parquet")
        report["rationale"] = {
            "rows": len(frame),
            "imported": True,
            "per_split": {k: int(v) for k, v in frame["split"].value_counts().items()},
            "not_in_split": int(len(extras["rationales"]) - len(frame)),
        }
    return report


def annotate(
    cfg,
    prepared: PreparedData,
    split: Split,
    *,
    stage: str = "all",
    dry_run: bool = False,
    shard: int = 0,
    num_shards: int = 1,
    merge: bool = False,
    force: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
    lock_wait: bool = True,
) -> dict:
    """The whole ``exp3rt-annotate`` run (minus Hydra): returns a JSON-ready report. ``cfg`` gives the
    groups the artifacts depend on (teacher, prompt, annotation, dataset, paths); the keywords say how
    this run goes (:class:`AnnotateOptions`). Holds ``<directory>/annotate.lock``
    (``annotate.shard-i-of-n.lock`` for a shard) while it runs; a second process waits for it, or with
    ``lock_wait=False`` stops naming the holder's pid."""
    opts = AnnotateOptions(
        stage=str(stage),
        dry_run=bool(dry_run),
        shard=int(shard),
        num_shards=int(num_shards),
        merge=bool(merge),
        force=bool(force),
        retry_failed=bool(retry_failed),
        progress=bool(progress),
        lock_wait=bool(lock_wait),
    )
    stages = check_run_options(opts.stage, opts.shard, opts.num_shards, opts.merge)
    prompts = Prompts.for_run(cfg)
    directory, fp = annotation_dir(cfg, split, prompts)
    directory.mkdir(parents=True, exist_ok=True)
    if opts.dry_run:  # sends nothing, writes no stage file: no lock needed
        return _annotate_locked(cfg, prepared, split, prompts, stages, directory, fp, opts)
    n, i = opts.num_shards, opts.shard
    name = "annotate.lock" if n == 1 or opts.merge else f"annotate.shard-{i}-of-{n}.lock"
    with file_lock(
        directory / name,
        what="exp3rt-annotate",
        wait=opts.lock_wait,
        hint=", or rerun with lock_wait=true to wait for it" if not opts.lock_wait else "",
    ):
        return _annotate_locked(cfg, prepared, split, prompts, stages, directory, fp, opts)


def _annotate_locked(
    cfg,
    prepared: PreparedData,
    split: Split,
    prompts: Prompts,
    stages: list[str],
    directory: Path,
    fp: str,
    opts: AnnotateOptions,
) -> dict:
    """:func:`annotate` while this process holds the directory's (or its shard's) lock: no other
    exp3rt-annotate sends this directory's requests at the same time."""
    save_config(cfg, directory / "config.yaml")
    write_meta(
        directory,
        "annotations",
        {
            "teacher": teacher_identity(cfg.teacher),
            "annotation": cfg.annotation,
            "prompt_versions": {s: prompts.version(s) for s in STAGE_ORDER},
        },
        {"split": split.fingerprint},
        fp,
        dataset_dir=str(prepared.directory),
        split_dir=str(split.directory),
    )
    result = {"directory": str(directory), "fingerprint": fp, "stages": stages, "dry_run": opts.dry_run}
    if opts.merge:
        result["merged"] = str(merge_shards(directory, stages[0], opts.num_shards))
        return result
    if TeacherBackendName(cfg.teacher.backend) == TeacherBackendName.release:
        result["report"] = import_release(cfg, prepared, split, directory)
        return result
    backend = build_backend(cfg.teacher, dry_run=opts.dry_run)
    cache = AnswerCache(Path(cfg.paths.artifacts_dir) / "teacher_cache.sqlite")
    ledger = SpendLedger(
        directory / SPEND_FILE
    )  # the budget holds for the directory, across reruns and shards
    batches = None
    if str(cfg.teacher.get("mode", "sync")) == "batch":
        # heavy: openai
        from exp3rt.teacher.batch import BATCH_FILE, BatchLedger, BatchTeacherClient

        batches = BatchLedger(
            directory / BATCH_FILE
        )  # every submitted batch id, committed before it is polled
        client = BatchTeacherClient(
            backend, cfg.teacher, cache, progress=opts.progress, ledger=ledger, batches=batches
        )
    else:
        client = TeacherClient(backend, cfg.teacher, cache, progress=opts.progress, ledger=ledger)

    async def main() -> None:
        try:  # one event loop for the whole run: the HTTP client is bound to it
            if opts.dry_run:
                result["estimate"] = estimate_stages(
                    cfg, prepared, split, client, backend, stages, directory, opts
                )
            else:
                try:
                    result["report"] = await run_stages(
                        cfg, prepared, split, client, backend, stages, directory, opts
                    )
                except TeacherError as e:
                    if type(e).__name__ != "BatchPending":
                        raise
                    log.warning("%s", e)  # submit_only: not an error; a later run collects
                    result["batch_pending"] = {
                        "message": str(e),
                        "batch_ids": e.batch_ids,
                        "requests": e.requests,
                    }
                result["usage"] = client.usage_summary()
                result["spent_total"] = ledger.total()
        finally:
            await backend.aclose()

    try:
        asyncio.run(main())
    finally:
        cache.close()
        ledger.close()
        if batches is not None:
            batches.close()
    return result
