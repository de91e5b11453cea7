"""``exp3rt-train`` without Hydra: examples → tokenised datasets → Lightning fit → adapter.

Run directory: ``config.yaml`` (resolved, secrets removed), ``checkpoints/last.ckpt`` (full state for
resume: step, optimizer, scheduler, data position; ``ckpt_path=last`` takes the newest checkpoint there),
``adapter/`` (adapter-only weights + tokenizer for
use), ``train.json`` (what was trained on and the final metrics), ``wandb/`` and ``csv/`` logs.
Resume: rerun with the same run dir and ``ckpt_path=last``; W&B continues the same run id.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from exp3rt.artifacts import (
    atomic_dir,
    record_folder,
    save_config,
    scrub_secrets,
    to_container,
    write_json_atomic,
)
from exp3rt.config import ConfigError
from exp3rt.data.prepare import prepare_dataset
from exp3rt.data.splits import prepare_split
from exp3rt.devices import check_machine
from exp3rt.locks import file_lock
from exp3rt.student.csv_history import csv_logger
from exp3rt.student.examples import build_examples
from exp3rt.student.prompts import StudentPrompts
from exp3rt.student.ratings import RatingTokens
from exp3rt.student.tokenize import answer_token_stats, build_dataset, collate

log = logging.getLogger(__name__)


def checkpoint_step(path: Path) -> int | None:
    """The ``global_step`` saved in a Lightning checkpoint file; None when it cannot be read (a file cut
    short by a kill). Memory-mapped: the weights and optimizer state are not read. A DeepSpeed
    checkpoint (a folder) gives -1: complete as far as can be told, ordered by time alone."""
    import torch

    if path.is_dir():
        return -1
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return int(state["global_step"])
    except Exception:  # noqa: BLE001 - unreadable or incomplete: not a checkpoint to resume from
        return None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint under ``run_dir/checkpoints``: the highest saved step, the later
    modification time between equal steps. ``last.ckpt`` is not enough on its own: a run dir written
    before ModelCheckpoint overwrote it can hold a newer ``last-v1.ckpt`` beside a stale ``last.ckpt``
    (written after ``trainer.checkpoint_every_n_steps`` changed)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    found = []
    for path in folder.glob("*.ckpt"):
        step = checkpoint_step(path)
        if step is None:
            log.warning("checkpoint %s cannot be read (cut short?): not resuming from it", path)
            continue
        found.append((step, path.stat().st_mtime, path))
    return max(found, key=lambda t: (t[0], t[1]))[2] if found else None


def resolve_ckpt(ckpt_path, run_dir: Path) -> str | None:
    if ckpt_path in (None, "", "none"):
        return None
    if ckpt_path == "last":
        newest = latest_checkpoint(run_dir)
        if newest is None:
            log.warning(
                "ckpt_path=last but %s holds no checkpoint: starting fresh", Path(run_dir) / "checkpoints"
            )
            return None
        return str(newest)
    if not Path(ckpt_path).exists():
        raise FileNotFoundError(f"ckpt_path does not exist: {ckpt_path}")
    return str(ckpt_path)


def wandb_logger(cfg, run_dir: Path, run_name: str):
    """A W&B logger that continues the run id stored in the run dir (so a resume appends to the same
    run); the whole resolved config, secrets removed, is logged once on rank zero."""
    from pytorch_lightning.loggers import WandbLogger

    id_file = run_dir / "wandb_run_id.txt"
    if id_file.exists():
        run_id = id_file.read_text().strip()
    elif os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
        run_id = os.environ["WANDB_RUN_ID"]  # launched by `wandb agent`: log into the run the sweep created
        id_file.write_text(run_id)
    else:
        import secrets

        run_id = secrets.token_hex(4)  # any [a-z0-9] string is a valid W&B run id
        id_file.write_text(run_id)
    tags = [str(t) for t in cfg.logger.tags] + [
        f"dataset:{cfg.dataset.name}",
        f"teacher:{cfg.teacher.name}",
        f"student:{cfg.student.name}",
        f"ablation:{cfg.get('ablation_name') or cfg.ablation.get('name', 'full')}",
    ]
    return WandbLogger(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        name=run_name,
        id=run_id,
        resume="allow",
        group=cfg.logger.group or cfg.get("experiment_name") or "default",
        tags=tags,
        save_dir=str(run_dir),
        offline=cfg.logger.mode == "offline",
        mode="disabled" if cfg.logger.mode == "disabled" else None,
        log_model=False,
    )


def _rank() -> int:
    """This process's rank as the launcher set it (0 when not launched as one rank of several)."""
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def rating_tokens(cfg, ratings, tokenizer) -> dict[int, float] | None:
    """Token id -> rating value after the student's answer prefix, for ``train.rating_mse_weight`` (None
    when the weight is 0). The expected-rating loss reads one next-token distribution, so every rating
    must be one token there; a scale whose ratings take several (a tokenizer that splits "10" or "4.5")
    is a configuration error, not a silent skip."""
    if not float(cfg.train.get("rating_mse_weight", 0.0) or 0.0) > 0:
        return None

    prefix = StudentPrompts(cfg.student_prompt, str(cfg.dataset.domain), ratings).rating_prefix
    seqs = ratings.token_ids(tokenizer, prefix)
    multi = [t for t, ids in zip(ratings.texts, seqs, strict=True) if len(ids) != 1]
    if multi:
        raise ConfigError(
            f"train.rating_mse_weight needs every rating written as one token after {prefix!r}; this "
            f"tokenizer spells {', '.join(multi[:3])} with several: set train.rating_mse_weight=0"
        )
    return {ids[0]: float(r) for ids, r in zip(seqs, ratings.ratings, strict=True)}


def train(
    cfg,
    run_dir: Path,
    annotations: Path,
    *,
    ckpt_path: str | None = None,
    progress: bool = True,
    lock_wait: bool = True,
    prepared=None,
    split=None,
) -> dict:
    """The whole ``exp3rt-train`` run (minus Hydra) on the teacher's artifacts in ``annotations`` (the
    caller finds them: :func:`exp3rt.teacher.annotate.find_annotation_dir`); ``ckpt_path`` resumes
    (:func:`resolve_ckpt`). ``prepared`` / ``split``: the data handles the caller already holds (the
    pipeline); without them they are prepared (or loaded from their cache) from ``cfg.dataset`` /
    ``cfg.split``. Rank zero holds ``<run_dir>/train.lock`` while it trains, so two runs on one
    run dir never write one checkpoint at once: the second waits, naming the holder's pid, or with
    ``lock_wait=False`` stops. (The other ranks of one training join rank zero.)"""
    check_machine(cfg)
    if _rank() != 0:
        return _train(cfg, run_dir, Path(annotations), ckpt_path, bool(progress), prepared, split)

    with file_lock(
        Path(run_dir) / "train.lock",
        what="exp3rt-train",
        wait=bool(lock_wait),
        hint=", or rerun with lock_wait=true to wait for it" if not lock_wait else "",
    ):
        return _train(cfg, run_dir, Path(annotations), ckpt_path, bool(progress), prepared, split)


def _train(
    cfg, run_dir: Path, ann_dir: Path, ckpt_path: str | None, progress: bool, prepared=None, split=None
) -> dict:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

    # heavy: torch, pytorch_lightning
    from exp3rt.student.lightning import StudentDataModule, StudentModule
    from exp3rt.student.model import load_tokenizer
    from exp3rt.student.strategies import trainer_kwargs

    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    pl.seed_everything(int(cfg.train.seed), workers=True)
    if prepared is None:
        prepared = prepare_dataset(cfg.dataset, cfg.paths.data_dir)
    if split is None:
        split = prepare_split(prepared, cfg.split)
    scale = prepared.dataset.scale
    ratings = RatingTokens.from_config(scale, offset=float(cfg.sft.rating_offset))
    examples = build_examples(
        ann_dir,
        split,
        prepared.dataset.items,
        str(cfg.dataset.domain),
        scale,
        cfg.sft,
        ablation=cfg.ablation,
        prompt=cfg.student_prompt,
    )
    tokenizer = load_tokenizer(cfg.student)
    train_examples = list(examples["train"])
    if not train_examples:
        raise ConfigError(f"no training examples for tasks {list(cfg.sft.tasks)} from {ann_dir}")
    # validation loss: a deterministic slice of the training examples; generation: valid rating pairs
    rng = np.random.default_rng(int(cfg.train.seed))
    n_val = int(round(float(cfg.sft.val_fraction) * len(train_examples)))
    order = rng.permutation(len(train_examples))
    val_loss_examples = [train_examples[i] for i in order[:n_val]]
    fit_examples = [train_examples[i] for i in order[n_val:]]
    gen_pool = [e for e in examples.get("valid", []) if e.task == "rating"] or [
        e for e in examples.get("test", []) if e.task == "rating"
    ]
    gen_examples = gen_pool[: int(cfg.train.val_generate_samples)]
    cache_dir = Path(cfg.sft.cache_dir) if cfg.sft.get("cache_dir") else ann_dir / "sft_cache"
    report: dict = {}
    train_ds = build_dataset(fit_examples, tokenizer, int(cfg.sft.max_length), cache_dir, report=report)
    val_ds = (
        build_dataset(val_loss_examples, tokenizer, int(cfg.sft.max_length), cache_dir)
        if val_loss_examples
        else None
    )

    micro = int(cfg.train.micro_batch_size)
    dm = StudentDataModule(
        train_ds, val_ds, lambda b: collate(b, tokenizer.pad_token_id), micro, int(cfg.train.seed)
    )
    module = StudentModule(
        cfg.student,
        cfg.peft,
        cfg.train,
        (scale.min, scale.max),
        gen_examples,
        tokenizer,
        rating_from_text=ratings.from_text,
        deepspeed_cfg=cfg.deepspeed,
        rating_tokens=rating_tokens(cfg, ratings, tokenizer),
    )

    run_name = (
        cfg.get("run_name")
        or f"{cfg.student.name}-{cfg.get('ablation_name') or cfg.ablation.get('name', 'full')}-"
        f"{cfg.dataset.name}"
    )
    loggers = []
    ckpt_path = resolve_ckpt(ckpt_path, run_dir)
    if cfg.logger.csv:
        loggers.append(
            csv_logger(
                run_dir,
                resuming=ckpt_path is not None,
                resume_step=checkpoint_step(Path(ckpt_path)) if ckpt_path else None,
            )
        )
    if cfg.logger.wandb and cfg.logger.mode != "disabled":
        wb = wandb_logger(cfg, run_dir, run_name)
        loggers.append(wb)
    tc = cfg.trainer
    trainer = pl.Trainer(
        **trainer_kwargs(tc, cfg.deepspeed, micro_batch_size=micro),
        default_root_dir=str(run_dir),
        logger=loggers or False,
        # enable_version_counter=False: a resumed run overwrites last.ckpt. Lightning recognises its own
        # last.ckpt by the callback's saved state, whose key holds every_n_train_steps; after
        # trainer.checkpoint_every_n_steps changed it wrote last-v1.ckpt beside the stale last.ckpt
        callbacks=[
            ModelCheckpoint(
                dirpath=str(run_dir / "checkpoints"),
                save_last=True,
                save_top_k=0,
                every_n_train_steps=tc.checkpoint_every_n_steps,
                enable_version_counter=False,
            ),
            LearningRateMonitor(logging_interval="step"),
        ],
        enable_progress_bar=progress,
        num_sanity_val_steps=0,
    )
    if loggers and trainer.is_global_zero:
        for lg in loggers:
            lg.log_hyperparams(scrub_secrets(to_container(cfg)))
    t0 = time.perf_counter()
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    finally:
        for lg in loggers:
            if hasattr(lg, "experiment") and lg.__class__.__name__ == "WandbLogger":
                try:
                    lg.experiment.finish()
                except Exception:  # noqa: BLE001 - closing must never hide the training error
                    pass
    seconds = time.perf_counter() - t0
    result = {
        "run_dir": str(run_dir),
        "annotations_dir": str(ann_dir),
        "global_step": int(trainer.global_step),
        "examples": {
            "train": len(fit_examples),
            "val_loss": len(val_loss_examples),
            "val_generate": len(gen_examples),
        },
        "example_report": examples.report,
        "tokenize_report": report,
        "seconds": round(seconds, 2),
        "answer_tokens": answer_token_stats(train_ds),
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
    }
    # heavy: torch, pytorch_lightning
    from exp3rt.student.strategies import generation_context

    with generation_context(module.model):  # ZeRO-3: all ranks gather the weights, rank zero writes them
        if trainer.is_global_zero:
            with atomic_dir(
                run_dir / "adapter"
            ) as adapter:  # renamed into place whole, each file's .sha inside
                module.model.save_pretrained(
                    str(adapter)
                )  # peft: the adapter only; full fine-tune: the model
                tokenizer.save_pretrained(str(adapter))
                record_folder(adapter)
            write_json_atomic(run_dir / "train.json", result)  # last: the file that says training finished
    result["is_global_zero"] = bool(trainer.is_global_zero)
    return result
