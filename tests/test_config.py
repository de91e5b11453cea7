"""Config composition and validation: every dataset and split config composes, and bad values are
rejected before any work with a sentence naming the key and the allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import rejection as _rejection
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from exp3rt import CONF_DIR
from exp3rt.config import ConfigError, validate

DATASETS = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))
SPLITS = sorted(p.stem for p in (CONF_DIR / "split").glob("*.yaml"))


def compose_baselines(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="baselines", overrides=overrides)


def test_config_groups_exist():
    assert {"synthetic", "amazon_magazine", "ml100k", "release_imdb"} <= set(DATASETS)
    assert {"random", "per_user", "temporal", "unseen_user", "predefined"} <= set(SPLITS)


@pytest.mark.parametrize("name", DATASETS)
def test_every_dataset_config_composes_and_validates(name, tmp_path):
    cfg = compose_baselines([f"dataset={name}"])
    if (
        cfg.dataset.get("path") is None and cfg.dataset.loader != "synthetic"
    ):  # generic configs take the file from the command line
        with pytest.raises(ConfigError, match="'dataset.path' is required"):
            validate(cfg)
        cfg = compose_baselines([f"dataset={name}", f"dataset.path={tmp_path}/x"])
    typed = validate(cfg)
    assert typed.dataset.name
    assert typed.dataset.scale.min < typed.dataset.scale.max
    OmegaConf.to_container(typed, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize("name", SPLITS)
def test_every_split_config_composes_and_validates(name):
    typed = validate(compose_baselines([f"split={name}"]))
    assert typed.split.strategy.value in {"random", "per_user", "temporal", "unseen_user", "predefined"}


def rejection(overrides: list[str]) -> str:
    return _rejection(compose_baselines, overrides)


@pytest.mark.parametrize(
    ("overrides", "key", "message"),
    [
        (
            ["dataset.duplicates=newest"],
            "dataset.duplicates",
            "Invalid value 'newest', expected one of [keep_first, keep_latest, error]",
        ),
        (
            ["dataset.loader=csv"],
            "dataset.loader",
            "expected one of [synthetic, amazon2018, exp3rt_release, tabular, lightgcn_topk]",
        ),
        (
            ["split.strategy=kfold"],
            "split.strategy",
            "expected one of [random, per_user, temporal, unseen_user, predefined]",
        ),
        (["dataset.strict=maybe"], "dataset.strict", "Value 'maybe' is not a valid bool"),
        (["dataset.colour=red"], "dataset.colour", "Key 'colour' not in 'DatasetConf'"),
        (["dataset.scale.min=5", "dataset.scale.max=1"], "dataset.scale", "min must be below max"),
        (["split.test_ratio=1.5"], "split.test_ratio", "must be in [0, 1)"),
        (["split.test_ratio=0.6", "split.valid_ratio=0.5"], "split.valid_ratio", "must be below 1"),
        (["baselines.rating.models=[svdpp]"], "baselines.rating.models", "unknown model 'svdpp'; allowed:"),
        (["eval.ks=[0,5]"], "eval.ks", "must hold positive cut-offs"),
        (["eval.rerank_rating_weight=-0.5"], "eval.rerank_rating_weight", "must be >= 0 or null"),
        (["eval.rerank_tune_weights=[1,-2]"], "eval.rerank_tune_weights", "must hold weights >= 0"),
        (["eval.rerank_tune_k=0"], "eval.rerank_tune_k", "must be >= 1"),
        (["eval.rerank_tune_on=test"], "eval.rerank_tune_on", "expected one of [valid, crossfit]"),
        (["eval.mode=slow"], "eval.mode", "Invalid value 'slow', expected one of [full, fast]"),
        (["eval.rerank_mode=half"], "eval.rerank_mode", "expected one of [full, fast]"),
        (
            ["eval.failure_policy=zero"],
            "eval.failure_policy",
            "expected one of [user_mean, item_mean, global_mean, exclude]",
        ),
        (["eval.split=train"], "eval.split", "expected one of [test, valid]"),
        (["eval.test_file_overlap=keep"], "eval.test_file_overlap", "expected one of [error, drop]"),
        (["split.leave_n_out=1"], "split.leave_n_out", "applies only to split.strategy=per_user"),
    ],
)
def test_bad_values_are_rejected_with_key_and_allowed_values(overrides, key, message):
    said = rejection(overrides)
    assert key in said and message in said


def test_overrides_of_schema_keys_need_no_plus():
    cfg = validate(
        compose_baselines(["dataset.duplicates=error", "split.leave_n_out=2", "split.strategy=per_user"])
    )
    assert cfg.dataset.duplicates == "error" and cfg.split.leave_n_out == 2


def test_paths_resolve_to_the_repository():
    cfg = compose_baselines([])
    assert Path(cfg.paths.root_dir) == CONF_DIR.parent
    assert cfg.paths.data_dir.endswith("artifacts/data") or "EXP3RT_ARTIFACTS" in __import__("os").environ


@pytest.mark.parametrize(
    ("overrides", "key", "message"),
    [
        (["student.dtype=fp8"], "student.dtype", "expected one of [float32, bfloat16, float16]"),
        (["peft.method=prefix"], "peft.method", "expected one of [lora, none]"),
        (["student.quantization=8bit"], "student.quantization", "must be null or 4bit (got '8bit')"),
    ],
)
def test_bad_student_values_are_rejected_before_any_model_loads(overrides, key, message):
    def compose_train(ov):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=ov)

    said = _rejection(compose_train, overrides)
    assert key in said and message in said


@pytest.mark.parametrize(
    ("overrides", "key", "message"),
    [
        (["teacher.mode=stream"], "teacher.mode", "expected one of [sync, batch]"),
        (["teacher.dtype=int8"], "teacher.dtype", "expected one of [float32, bfloat16, float16, fp32, bf16"),
        (["logger.mode=remote"], "logger.mode", "expected one of [offline, online, disabled]"),
        (["annotation.consistency_action=drop"], "annotation.consistency_action", "[flag, regenerate]"),
        (["student.tiny_vocab=chars"], "student.tiny_vocab", "expected one of [byte, bpe, words]"),
        (["peft.bias=some"], "peft.bias", "expected one of [none, all, lora_only]"),
        (["deepspeed.offload_param=gpu"], "deepspeed.offload_param", "expected one of [cpu, nvme]"),
        (["eval.rerank_retriever=svd"], "eval.rerank_retriever", "[popularity, bpr_mf, lightgcn]"),
        (["dataset.format=xlsx"], "dataset.format", "expected one of [auto, csv, tsv, jsonl, parquet]"),
    ],
)
def test_choice_keys_are_enums_rejected_while_composing(overrides, key, message):
    """Every key that takes one of a fixed set of names is an enum in exp3rt.config, so a bad value is
    refused while composing (naming the allowed values), never late in the stage that reads it."""

    def compose_pipeline(ov):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="pipeline", overrides=ov)

    said = _rejection(compose_pipeline, overrides)
    assert key in said and message in said
