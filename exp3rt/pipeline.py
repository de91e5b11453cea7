"""``exp3rt-pipeline`` without Hydra: data → baselines → annotate → train → evaluate in one run.

Every stage writes into a directory named by a fingerprint of exactly the settings it depends on
(plus, through those, the fingerprints of the data and split), under ``paths.artifacts_dir``:

    data/<dataset>-<fp>/, splits/…              prepared data and split (exp3rt.data)
    baselines/<dataset>-<fp>/                   exp3rt-baselines output (metrics.json, candidates/)
    annotations/<dataset>-<split>/<teacher>-<fp>/   teacher artifacts (each teacher stage resumes)
    students/<dataset>-<student>-<fp>/          exp3rt-train run dir (checkpoints/, adapter/, train.json)
    evaluations/<dataset>-<fp>/                 exp3rt-evaluate output (metrics.json, report.md, plots)

A stage whose finished marker exists (metrics.json, train.json) is skipped; a training stage that
crashed resumes from its ``checkpoints/last.ckpt``; the teacher resumes from its answer cache, so a
paid call is never sent twice. The pipeline's own run dir gets ``config.yaml``, ``pipeline.json``
(what each stage did, where, how long), ``metrics.json`` (all numbers of the run, one file) and
``report.md``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from exp3rt.artifacts import (
    StagingDir,
    atomic_path,
    discard,
    fingerprint,
    folder_intact,
    intact,
    save_config,
    to_container,
    write_json_atomic,
    write_text_atomic,
)
from exp3rt.baselines.runner import baselines_stage
from exp3rt.config import ConfigError
from exp3rt.data.prepare import prepare_dataset
from exp3rt.data.splits import prepare_split
from exp3rt.devices import check_machine, free_memory
from exp3rt.evaluation.evaluate import evaluate
from exp3rt.evaluation.report import flat_metrics as eval_flat
from exp3rt.evaluation.report import markdown_table, numbers
from exp3rt.inference.predict import predict
from exp3rt.locks import file_lock  # noqa: F401 - also imported from here
from exp3rt.student.train import latest_checkpoint, train
from exp3rt.teacher.annotate import annotate, annotation_dir, find_annotation_dir, teacher_identity
from exp3rt.teacher.lexicon import WORLD, lexicon_tag, load_lexicon
from exp3rt.teacher.prompts import Prompts

log = logging.getLogger(__name__)

STAGES = ("baselines", "annotate", "train", "evaluate")

# config groups that change what a stage produces (run names, loggers and progress bars do not)
_BASELINE_KEYS = ("baselines",)  # their training seeds are baselines.rating.seed / baselines.retrieval.seed
_TRAIN_KEYS = (
    "teacher",
    "prompt",
    "annotation",
    "annotations_dir",
    "sft",
    "student_prompt",
    "ablation",
    "student",
    "peft",
    "train",
    "deepspeed",
    "trainer",
)
# trainer keys that change neither the weights nor the metrics
_TRAINER_COSMETIC = ("log_every_n_steps", "checkpoint_every_n_steps", "slurm_tasks_per_node")
_EVAL_COSMETIC = ("wandb", "wandb_rows")
#: keys added after students were trained, at the value that trains exactly as before they existed: left out
#: of the fingerprint at that value, so a student trained before the key existed is still found
_TRAIN_NEUTRAL = {("train", "rating_mse_weight"): 0.0, ("prompt", "aspect_lexicon"): None}


def _pick(cfg: DictConfig, keys) -> dict:
    return {k: to_container(cfg.get(k)) for k in keys}


def _teacher_identity(cfg) -> dict:
    """The teacher settings that change its answers (not its key variable, rate limits or concurrency)."""
    return teacher_identity(cfg.teacher)


def stage_fingerprints(cfg: DictConfig, data_fp: str, split_fp: str) -> dict[str, str]:
    """Fingerprint of each stage's inputs; a downstream stage includes its upstream's fingerprint."""
    base = fingerprint("baselines", data_fp, split_fp, _pick(cfg, _BASELINE_KEYS), to_container(cfg.eval.ks))
    train_part = _pick(cfg, _TRAIN_KEYS)
    train_part["teacher"] = _teacher_identity(cfg)
    train_part["trainer"] = {k: v for k, v in train_part["trainer"].items() if k not in _TRAINER_COSMETIC}
    for (group, key), neutral in _TRAIN_NEUTRAL.items():
        if train_part[group].get(key, neutral) == neutral:
            train_part[group].pop(key, None)
    lexicon = train_part["prompt"].get("aspect_lexicon")
    if lexicon and lexicon != WORLD:  # a file: what it says, not only its name (an edited file is new data)
        train_part["prompt"]["aspect_lexicon_digest"] = lexicon_tag(
            load_lexicon(lexicon, str(cfg.dataset.domain), cfg.dataset.get("loader"))
        )
    train = fingerprint("train", data_fp, split_fp, train_part)
    ev = {k: v for k, v in to_container(cfg.eval).items() if k not in _EVAL_COSMETIC}
    evaluate = fingerprint("evaluate", train, base, ev)  # reranking reads the baselines' candidates
    return {"baselines": base, "train": train, "evaluate": evaluate}


#: the file a stage writes last: its artifact is finished when it exists (and is intact)
MARKERS = {"baselines": "metrics.json", "train": "train.json", "evaluate": "metrics.json"}


def _done(stage: str, directory: Path) -> bool:
    """The stage's artifact is finished: its marker exists, and neither it nor any file recorded with a
    ``.sha`` beside it is damaged (a warning names a damaged file; the stage then runs again)."""
    if not (directory / MARKERS[stage]).is_file():
        return False
    return folder_intact(directory, [MARKERS[stage]], f"the {stage} stage in {directory}")


def _discard_damaged(stage: str, directory: Path) -> None:
    """A finished-looking baselines or evaluation folder that failed :func:`_done` is removed before it is
    made again. A training folder is kept: its checkpoints are the work, and training resumes from them."""
    if stage in ("baselines", "evaluate") and (directory / MARKERS[stage]).is_file():
        discard(directory)


def stage_dirs(cfg: DictConfig, fps: dict[str, str]) -> dict[str, Path]:
    """Where each fingerprinted stage writes, under ``paths.artifacts_dir``."""
    art, name = Path(cfg.paths.artifacts_dir), str(cfg.dataset.name)
    return {
        "baselines": art / "baselines" / f"{name}-{fps['baselines'][:12]}",
        "train": art / "students" / f"{name}-{cfg.student.name}-{fps['train'][:12]}",
        "evaluate": art / "evaluations" / f"{name}-{fps['evaluate'][:12]}",
    }


def check_stages(cfg: DictConfig) -> tuple[list[str], list[str]]:
    stages = [str(s) for s in cfg.stages]
    force = [str(s) for s in (cfg.get("force") or [])]
    for name, values in (("stages", stages), ("force", force)):
        bad = [s for s in values if s not in STAGES]
        if bad:
            raise ConfigError(f"config key '{name}' has unknown stage(s) {bad}; allowed: {list(STAGES)}")
    return stages, force


def dry_run(cfg: DictConfig, out_dir: Path) -> dict:
    """Compose, validate and build everything short of loading the student's weights or calling the
    teacher: the prepared data and split, the teacher's calls/tokens/cost estimate (no key needed), the
    Lightning strategy with its DeepSpeed dict, the batch arithmetic, the LoRA and 4-bit configs, and the
    stage artifacts a real run would write or reuse. For cluster presets checked on a laptop."""
    # heavy: torch, pytorch_lightning (a dry run only)
    from exp3rt.student.model import lora_config, quantization_config
    from exp3rt.student.strategies import adam_class, build_strategy

    out: dict = {"task": "pipeline", "dry_run": True, "experiment_name": cfg.get("experiment_name")}
    prepared = prepare_dataset(cfg.dataset, cfg.paths.data_dir)
    split = prepare_split(prepared, cfg.split)
    out["data"] = {
        "dir": str(prepared.directory),
        **prepared.dataset.summary(),
        "split": {"dir": str(split.directory), **split.meta.get("stats", {})},
    }
    train_dir = stage_dirs(cfg, stage_fingerprints(cfg, prepared.fingerprint, split.fingerprint))["train"]
    out["artifacts"] = {"train": {"dir": str(train_dir), "finished": _done("train", train_dir)}}
    if "annotate" in [str(s) for s in cfg.stages]:
        est = annotate(cfg, prepared, split, dry_run=True, progress=False)
        out["teacher"] = {
            "identity": _teacher_identity(cfg),
            "directory": est.get("directory"),
            "estimate": est.get("estimate"),
            "imported": est.get("report") is not None,
        }
        if est.get("estimate"):
            out["teacher"]["max_cost_usd"] = round(
                sum(float(e.get("cost_usd") or 0) for e in est["estimate"].values()), 4
            )
    micro = int(cfg.train.micro_batch_size)
    strategy = build_strategy(cfg.trainer, cfg.deepspeed, micro_batch_size=micro)
    out["strategy"] = strategy if isinstance(strategy, str) else type(strategy).__name__
    ds_config = getattr(strategy, "config", None)
    if ds_config:
        out["deepspeed"] = {
            k: ds_config[k]
            for k in (
                "zero_optimization",
                "train_micro_batch_size_per_gpu",
                "gradient_accumulation_steps",
                "bf16",
                "fp16",
            )
            if k in ds_config
        }
    out["optimizer"] = adam_class(cfg.deepspeed, str(cfg.trainer.precision)).__name__
    world = int(cfg.trainer.devices) * int(cfg.trainer.num_nodes)
    accum = int(cfg.trainer.accumulate_grad_batches or 1)
    out["batch"] = {
        "micro_batch_size": micro,
        "devices": int(cfg.trainer.devices),
        "num_nodes": int(cfg.trainer.num_nodes),
        "accumulate_grad_batches": accum,
        "global_batch_size": micro * world * accum,
        "precision": str(cfg.trainer.precision),
        "max_length": int(cfg.sft.max_length),
    }
    out["student"] = {
        "name": str(cfg.student.name),
        "model_path": str(cfg.student.model_path),
        "dtype": str(cfg.student.dtype),
        "quantization": cfg.student.get("quantization"),
        "weights": "not loaded (dry run)",
    }
    if str(cfg.peft.method) == "lora":
        lora = lora_config(cfg.peft)
        out["peft"] = {
            "method": "lora",
            "r": lora.r,
            "alpha": lora.lora_alpha,
            "dropout": lora.lora_dropout,
            "bias": lora.bias,
            "target_modules": lora.target_modules
            if isinstance(lora.target_modules, str)
            else sorted(lora.target_modules),
        }
    else:
        out["peft"] = {"method": str(cfg.peft.method)}
    quantization = quantization_config(cfg.student)
    if quantization is not None:
        out["student"]["quantization_config"] = {
            "load_in_4bit": quantization.load_in_4bit,
            "quant_type": quantization.bnb_4bit_quant_type,
            "double_quant": quantization.bnb_4bit_use_double_quant,
            "compute_dtype": str(quantization.bnb_4bit_compute_dtype).removeprefix("torch."),
        }
    out["eval"] = {
        k: to_container(cfg.eval.get(k))
        for k in (
            "mode",
            "rerank",
            "rerank_retriever",
            "num_candidates",
            "rerank_mode",
            "max_new_tokens",
            "failure_policy",
        )
    }
    write_json_atomic(out_dir / "pipeline.json", out)
    return out


def run_pipeline(cfg: DictConfig, out_dir: Path, hydra_info: dict | None = None) -> dict:
    """The whole ``exp3rt-pipeline`` run (minus Hydra). Returns the combined metrics."""
    stages, force = check_stages(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    if cfg.get("dry_run"):
        return dry_run(cfg, out_dir)
    if "train" in stages:
        check_machine(cfg)
    record: dict = {"task": "pipeline", "stages": {}, "hydra": hydra_info or {}}
    t0 = time.perf_counter()
    prepared = prepare_dataset(cfg.dataset, cfg.paths.data_dir)
    split = prepare_split(prepared, cfg.split)
    record["stages"]["data"] = {
        "status": "ready",
        "dir": str(prepared.directory),
        "split_dir": str(split.directory),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    dirs = stage_dirs(cfg, stage_fingerprints(cfg, prepared.fingerprint, split.fingerprint))
    results: dict = {}

    def finish(stage: str, status: str, started: float, **extra) -> None:
        record["stages"][stage] = {
            "status": status,
            "dir": str(extra.pop("dir", dirs.get(stage, ""))),
            "seconds": round(time.perf_counter() - started, 2),
            **extra,
        }
        write_json_atomic(out_dir / "pipeline.json", record)
        log.info("stage %s: %s (%s)", stage, status, record["stages"][stage]["dir"])

    for stage in STAGES:
        if stage not in stages:
            continue
        started = time.perf_counter()
        d = dirs.get(stage)
        with _shared_stage_lock(stage, cfg, dirs, split):
            if stage != "annotate" and stage in force and d is not None and d.exists():
                shutil.rmtree(d)
            if d is not None and _done(stage, d):
                results[stage] = _load_result(stage, d)
                finish(stage, "skipped", started, reason="finished artifact with the same inputs")
                continue
            if d is not None:
                _discard_damaged(stage, d)
            if stage == "baselines":
                results[stage] = baselines_stage(prepared, split, cfg.baselines, cfg.eval, d, config=cfg)
                finish(stage, "ran", started)
            elif stage == "annotate":
                results[stage] = _annotate(cfg, prepared, split, force="annotate" in force)
                rep = results[stage].get("report", {})
                status = "skipped" if rep and all(r.get("skipped") for r in rep.values()) else "ran"
                finish(
                    stage, status, started, dir=results[stage]["directory"], usage=results[stage].get("usage")
                )
        if stage == "train":
            resume = latest_checkpoint(d) is not None  # a DeepSpeed last.ckpt is a folder
            results[stage] = _train(cfg, d, resume, prepared, split)
            finish(
                stage, "resumed" if resume else "ran", started, global_step=results[stage].get("global_step")
            )
            if not results[stage].get("is_global_zero", True):
                return {}  # the other ranks of a multi-process training stop here
            free_memory()  # the trainer and its engine, before evaluation loads the student again
        elif stage == "evaluate":
            if not _done("train", dirs["train"]):
                raise FileNotFoundError(
                    f"no finished student at {dirs['train']} for these settings: "
                    "run the train stage first (stages=[...,train,evaluate])"
                )
            results[stage] = _evaluate(cfg, dirs["train"], d, dirs["baselines"])
            finish(stage, "ran", started)
    metrics = combine(cfg, record, results, hydra_info or {})
    if "evaluate" in results:
        metrics["example"] = first_explanation(dirs["evaluate"] / "predictions.jsonl")
    write_json_atomic(out_dir / "metrics.json", metrics)
    if "evaluate" in results and (dirs["evaluate"] / "report.md").is_file():
        _write_report(out_dir, dirs["evaluate"], record)
    return metrics


def _shared_stage_lock(stage: str, cfg: DictConfig, dirs: dict, split):
    """An exclusive file lock around the baselines and annotate stages, keyed by their artifact: jobs of
    one multirun (e.g. one per ablation) share those artifacts and may start together, and every rank of
    a multi-task SLURM job runs the pipeline. The first makes the artifact; the others wait, then find
    it finished and skip it — the teacher is never asked twice and no job reads a half-written file.
    Training (all ranks together) and evaluation (rank zero) are not locked."""
    if stage == "baselines":
        target = dirs["baselines"]
    elif stage == "annotate":
        prompts = Prompts.for_run(cfg)
        target, _ = annotation_dir(cfg, split, prompts)
    else:
        return contextlib.nullcontext()
    return file_lock(target.with_name(f"{target.name}.lock"), what=f"stage {stage}")


def _load_result(stage: str, d: Path) -> dict:
    return json.loads((d / MARKERS[stage]).read_text())


def _annotate(cfg: DictConfig, prepared, split, force: bool) -> dict:
    result = annotate(
        cfg,
        prepared,
        split,
        force=force,
        retry_failed=bool(cfg.get("retry_failed", False)),
        progress=bool(cfg.get("progress", True)),
    )
    pending = result.get("batch_pending")
    if pending:  # teacher.batch.submit_only: the stages are not done, so nothing after them may run
        # heavy: openai
        from exp3rt.teacher.batch import BatchPending

        raise BatchPending(
            f"{pending['message']}. The pipeline stops after its annotate stage until then",
            pending["batch_ids"],
            pending["requests"],
        )
    result["usage"] = artifact_usage(Path(result["directory"]))
    return result


def artifact_usage(directory: Path) -> dict:
    """What producing the teacher artifacts cost, summed over their stages' ``<stage>.usage.json`` — the
    same figures whether this run made the calls or found the artifacts finished."""
    keys = ("requests", "cached", "calls", "failed", "prompt_tokens", "completion_tokens", "cost_usd")
    total: dict = {k: 0 for k in keys}
    stages = []
    for path in sorted(directory.glob("*.usage.json")):
        if not intact(path, "nothing: its stage's cost is left out of this sum"):
            continue
        u = json.loads(path.read_text()).get("usage") or {}
        stages.append(path.name.split(".")[0])
        for k in keys:
            total[k] += u.get(k) or 0
        total.setdefault("backend", u.get("backend"))
        total.setdefault("model", u.get("model"))
    total["cost_usd"] = round(float(total["cost_usd"]), 6)
    total["stages"] = stages
    return total


def _train(cfg: DictConfig, d: Path, resume: bool, prepared, split) -> dict:
    return train(
        cfg,
        d,
        find_annotation_dir(cfg, prepared, split),
        ckpt_path="last" if resume else None,
        progress=bool(cfg.get("progress", True)),
        prepared=prepared,
        split=split,
    )


def _evaluate(cfg: DictConfig, train_dir: Path, d: Path, base_dir: Path | None = None) -> dict:
    ev = to_container(cfg.eval)
    if ev.get("rerank") and not ev.get("candidates_file") and base_dir is not None:
        cand = base_dir / "candidates" / f"{ev['rerank_retriever']}.parquet"
        if cand.is_file():  # the first stage's own candidates, as the baselines stage wrote them
            ev["candidates_file"] = str(cand)
    with _staging(d) as tmp:
        metrics = evaluate(
            OmegaConf.create(ev), tmp, run_dir=train_dir, predict_fn=predict, wandb_into_train_run=True
        )
    return json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").is_file() else metrics


def _staging(d: Path):
    d.parent.mkdir(parents=True, exist_ok=True)
    return StagingDir(d)


def combine(cfg: DictConfig, record: dict, results: dict, hydra_info: dict) -> dict:
    """One metrics.json for the run: the student and baselines on the same test pairs, reranking, the
    first-stage retrievers, teacher usage and time per stage — what exp3rt-compare and experiments/ read."""
    ev = results.get("evaluate") or {}
    base = results.get("baselines") or {}
    ann = results.get("annotate") or {}
    train = results.get("train") or {}
    out: dict = {
        "task": "pipeline",
        "experiment_name": cfg.get("experiment_name"),
        "choices": hydra_info.get("choices", {}),
        "overrides": hydra_info.get("overrides", []),
        "dataset": ev.get("dataset") or base.get("dataset"),
        "rating": ev.get("rating") or {},
        "paired": ev.get("paired") or {},
        "rerank": ev.get("rerank") or {},
        "generation": ev.get("generation") or {},
        "reasoning": ev.get("reasoning") or {},
        "retrieval": base.get("retrieval") or {},
        "baselines_rating": base.get("rating") or {},
        "train": {k: train.get(k) for k in ("global_step", "seconds", "examples", "metrics") if k in train},
        "teacher": {"usage": ann.get("usage"), "directory": ann.get("directory")},
        "protocol": ev.get("protocol") or {},
        "stages": record["stages"],
    }
    u = ann.get("usage") or {}
    out["efficiency"] = {
        "train_seconds": train.get("seconds"),
        "eval_seconds_per_pair": (ev.get("protocol") or {}).get("seconds_per_pair"),
        "rerank_seconds_per_user": (ev.get("rerank") or {}).get("seconds_per_user"),
        "teacher_calls": u.get("calls") if isinstance(u, dict) else None,
        "teacher_cost_usd": u.get("cost_usd") if isinstance(u, dict) else None,
    }
    out["flat"] = flat_metrics(out)
    return out


def flat_metrics(metrics: dict) -> dict[str, float]:
    """Every number as ``section/name/key`` — the names W&B, sweeps, Optuna and exp3rt-compare use:
    ``rating/<model>/<key>``, ``paired/student_expected_vs_<model>/<key>``,
    ``rerank/<before|after|gain>/<metric>``, ``retrieval/<model>/<metric>``, ``generation/<key>``
    (reasoning budget and how many reasonings it cut), ``efficiency/<key>``."""
    out = eval_flat(
        {
            "rating": metrics.get("rating") or {},
            "paired": metrics.get("paired") or {},
            "rerank": metrics.get("rerank") or {},
            "generation": metrics.get("generation") or {},
            "reasoning": metrics.get("reasoning") or {},
        }
    )
    for model, r in (metrics.get("retrieval") or {}).items():
        out.update(numbers(f"retrieval/{model}", r or {}))
    out.update(numbers("efficiency", metrics.get("efficiency") or {}))
    return out


def first_explanation(path: Path) -> dict | None:
    """The first test pair with generated reasoning (not a chosen best case)."""
    if not path.is_file():
        return None
    with open(path) as f:
        for line in f:
            p = json.loads(line)
            if p.get("reasoning") and p.get("rating_expected") is not None:
                return {
                    "user_id": p["user_id"],
                    "item_id": p["item_id"],
                    "truth": p["truth"],
                    "expected": p["rating_expected"],
                    "reasoning": p["reasoning"],
                }
    return None


def _write_report(out_dir: Path, eval_dir: Path, record: dict) -> None:
    text = (eval_dir / "report.md").read_text()
    rows = [[s, r.get("status"), r.get("seconds"), r.get("dir")] for s, r in record["stages"].items()]
    text += (
        "\n## Pipeline stages\n\n" + markdown_table(["stage", "status", "seconds", "artifact"], rows) + "\n"
    )
    write_text_atomic(out_dir / "report.md", text)
    for png in eval_dir.glob("*.png"):
        with atomic_path(out_dir / png.name) as tmp:
            shutil.copy2(png, tmp)
