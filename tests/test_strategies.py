"""Training strategies: every trainer × deepspeed preset composes and validates (or is rejected with
the stated reason), the validation rules, the strategy objects, and real DeepSpeed ZeRO-2/ZeRO-3 runs
on 2 CPU processes over gloo (tests/zero_cpu_train.py, started as a subprocess because Lightning
re-runs the launching script once per extra device)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import rejection as _rejection
from omegaconf import OmegaConf
from zero_cpu_train import build_module, compose_training, fixed_batch

from exp3rt import CONF_DIR
from exp3rt.config import ConfigError, validate
from exp3rt.student.strategies import (
    CPUDeepSpeedStrategy,
    build_strategy,
    deepspeed_config,
    trainer_kwargs,
)

TRAINERS = sorted(p.stem for p in (CONF_DIR / "trainer").glob("*.yaml"))
DEEPSPEEDS = sorted(p.stem for p in (CONF_DIR / "deepspeed").glob("*.yaml"))
SCRIPT = Path(__file__).with_name("zero_cpu_train.py")
REPO = Path(__file__).resolve().parents[1]


def test_preset_names():
    assert set(TRAINERS) == {
        "cpu",
        "gpu",
        "ddp",
        "deepspeed_zero2",
        "deepspeed_zero2_offload",
        "deepspeed_zero3",
        "deepspeed_cpu",
    }
    assert set(DEEPSPEEDS) == {"none", "zero2", "zero2_offload", "zero3"}


def expected_rejection(trainer: str, deepspeed: str) -> str | None:
    """Why validate() must refuse trainer=<trainer> deepspeed=<deepspeed> (train=default), or None."""
    is_ds_trainer = trainer.startswith("deepspeed_")
    if is_ds_trainer and deepspeed == "none":
        return "trainer.strategy=deepspeed needs a DeepSpeed config"
    if not is_ds_trainer and deepspeed != "none":
        return "is set but trainer.strategy="
    if trainer == "deepspeed_cpu" and deepspeed == "zero2_offload":
        return "offloading does nothing on trainer.accelerator=cpu"
    if deepspeed == "zero3":  # train.val_generate is true by default
        return "in-training generation is incompatible with DeepSpeed ZeRO-3"
    return None


@pytest.mark.parametrize("deepspeed", DEEPSPEEDS)
@pytest.mark.parametrize("trainer", TRAINERS)
def test_every_trainer_deepspeed_pair_validates_or_is_rejected_for_its_reason(trainer, deepspeed):
    cfg = compose_training([f"trainer={trainer}", f"deepspeed={deepspeed}"])
    reason = expected_rejection(trainer, deepspeed)
    if reason is not None:
        with pytest.raises(ConfigError, match=reason):
            validate(cfg)
        return
    typed = validate(cfg)
    OmegaConf.to_container(typed, resolve=True)
    tr, loop = typed.trainer, typed.train
    assert loop.batch_size == loop.micro_batch_size * tr.devices * tr.num_nodes * tr.accumulate_grad_batches
    strategy = build_strategy(tr, typed.deepspeed, loop.micro_batch_size)
    if tr.strategy.value == "deepspeed":
        assert type(strategy).__name__ == (
            "CPUDeepSpeedStrategy" if tr.accelerator.value == "cpu" else "DeepSpeedStrategy"
        )
        assert strategy.config["zero_optimization"]["stage"] == typed.deepspeed.stage
        assert "gradient_accumulation_steps" not in strategy.config
    else:
        assert strategy == tr.strategy.value


@pytest.mark.parametrize(
    ("trainer", "stage", "offload"),
    [
        ("deepspeed_zero2", 2, None),
        ("deepspeed_zero2_offload", 2, "cpu"),
        ("deepspeed_zero3", 3, None),
        ("deepspeed_cpu", 2, None),
    ],
)
def test_deepspeed_trainer_presets_select_their_deepspeed_preset(trainer, stage, offload):
    typed = validate(compose_training([f"trainer={trainer}", "train.val_generate=false"]))
    assert typed.trainer.strategy.value == "deepspeed"
    assert (typed.deepspeed.stage, typed.deepspeed.offload_optimizer) == (stage, offload)


def test_zero3_with_gathered_generation_or_without_generation_is_accepted():
    validate(compose_training(["trainer=deepspeed_zero3", "deepspeed.gather_for_generation=true"]))
    validate(compose_training(["trainer=deepspeed_zero3", "train.val_generate=false"]))


def rejection(overrides: list[str]) -> str:
    return _rejection(compose_training, overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["trainer.precision=16-mixed"],
            "trainer.precision=16-mixed needs a GPU; use bf16-mixed or 32-true on CPU",
        ),
        (
            ["trainer=deepspeed_cpu", "trainer.precision=16-mixed"],
            "needs a GPU; use bf16-mixed or 32-true on CPU",
        ),
        (["trainer.precision=fp8"], "unknown precision 'fp8'"),
        (
            ["trainer=deepspeed_zero2", "deepspeed=none"],
            "trainer.strategy=deepspeed needs a DeepSpeed config",
        ),
        (["trainer=ddp", "deepspeed=zero2"], "deepspeed.stage=2 is set but trainer.strategy=ddp"),
        (["trainer=deepspeed_zero3"], "in-training generation is incompatible with DeepSpeed ZeRO-3"),
        (
            ["trainer=gpu", "trainer.slurm_tasks_per_node=4"],
            "SLURM tasks_per_node must equal trainer.devices",
        ),
        (
            ["trainer=deepspeed_zero2", "+deepspeed.extra.gradient_accumulation_steps=4"],
            "'deepspeed.extra.gradient_accumulation_steps' must not be set: Lightning sets it from "
            "trainer.accumulate_grad_batches",
        ),
        (
            ["trainer=deepspeed_zero2", "+deepspeed.extra.optimizer.params.lr=auto"],
            "'deepspeed.extra.optimizer.params.lr' is \"auto\": Lightning hands the dict to DeepSpeed "
            "unresolved",
        ),
        (["trainer=deepspeed_zero2", "deepspeed.reduce_bucket_size=auto"], "deepspeed.reduce_bucket_size"),
        (
            ["trainer=deepspeed_zero2", "+deepspeed.extra.train_micro_batch_size_per_gpu=2"],
            "it is train.micro_batch_size",
        ),
        (
            ["trainer=deepspeed_zero2", "deepspeed.offload_param=cpu"],
            "'deepspeed.offload_param' needs deepspeed.stage=3",
        ),
        (
            ["trainer=deepspeed_cpu", "deepspeed=zero2_offload"],
            "offloading does nothing on trainer.accelerator=cpu",
        ),
        (["trainer=deepspeed_zero2", "deepspeed.stage=4"], "'deepspeed.stage' must be 1, 2 or 3"),
        (
            ["trainer=ddp", "train.micro_batch_size=2", "train.batch_size=24"],
            "'train.batch_size': 24 is not a multiple of train.micro_batch_size × trainer.devices × "
            "trainer.num_nodes = 2 × 8 × 1 = 16",
        ),
        (
            ["trainer=ddp", "train.batch_size=64", "trainer.accumulate_grad_batches=4"],
            "64 != train.micro_batch_size × trainer.devices × trainer.num_nodes × "
            "trainer.accumulate_grad_batches = 1 × 8 × 1 × 4 = 32",
        ),
        (["trainer.strategy=fsdp"], "trainer.strategy"),
        (
            ["trainer.val_check_interval=1.5"],
            "'trainer.val_check_interval' must be an int (batches) or a float in (0, 1]",
        ),
    ],
)
def test_rules_reject_with_a_sentence_naming_the_keys(overrides, message):
    assert message in rejection(overrides)


@pytest.mark.parametrize(
    ("overrides", "accum", "batch"),
    [
        (["trainer=ddp", "train.micro_batch_size=2", "train.batch_size=64"], 4, 64),  # derived: 64 / (2 × 8)
        (
            ["trainer=ddp", "train.micro_batch_size=2", "trainer.accumulate_grad_batches=3"],
            3,
            48,
        ),  # derived batch
        (
            [
                "trainer=ddp",
                "trainer.num_nodes=2",
                "train.batch_size=32",
                "trainer.accumulate_grad_batches=2",
            ],
            2,
            32,
        ),
        (["trainer=cpu"], 1, 1),
    ],
)
def test_batch_size_rule_derives_accumulation(overrides, accum, batch):
    typed = validate(compose_training(overrides))
    assert (typed.trainer.accumulate_grad_batches, typed.train.batch_size) == (accum, batch)


def test_slurm_tasks_per_node_equal_to_devices_is_accepted():
    validate(compose_training(["trainer=ddp", "trainer.slurm_tasks_per_node=8"]))


def test_deepspeed_dict_is_lightning_dialect():
    zero3 = validate(compose_training(["trainer=deepspeed_zero3", "train.val_generate=false"]))
    cfg = deepspeed_config(zero3.deepspeed, "bf16-mixed", micro_batch_size=2)
    assert cfg["bf16"] == {"enabled": True} and "fp16" not in cfg
    assert cfg["train_micro_batch_size_per_gpu"] == 2
    assert cfg["zero_allow_untested_optimizer"] is True
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is False
    assert "offload_optimizer" not in zero and "allgather_bucket_size" not in zero
    off = validate(compose_training(["trainer=deepspeed_zero2_offload"])).deepspeed
    cfg = deepspeed_config(off, "16-mixed")
    assert cfg["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert cfg["fp16"]["enabled"] is True and cfg["fp16"]["loss_scale"] == 0
    assert "train_micro_batch_size_per_gpu" not in cfg
    cfg = deepspeed_config(off, "32-true")
    assert "fp16" not in cfg and "bf16" not in cfg
    assert "gradient_accumulation_steps" not in cfg and "auto" not in json.dumps(cfg)
    extra = OmegaConf.merge(off, {"extra": {"wall_clock_breakdown": True}})
    assert deepspeed_config(extra, "32-true")["wall_clock_breakdown"] is True
    with pytest.raises(ConfigError, match='"auto"'):
        deepspeed_config(OmegaConf.merge(off, {"extra": {"steps_per_print": "auto"}}), "32-true")


def test_build_strategy_without_validate_still_fails_fast():
    with pytest.raises(ConfigError, match="needs a DeepSpeed config"):
        build_strategy({"strategy": "deepspeed", "accelerator": "gpu"}, None)
    with pytest.raises(ConfigError, match="needs a GPU"):
        build_strategy({"strategy": "deepspeed", "accelerator": "cpu", "precision": "16-mixed"}, {"stage": 2})


def test_lightning_trainer_accepts_the_cpu_deepspeed_strategy():
    import pytorch_lightning as pl

    typed = validate(
        compose_training(["trainer=deepspeed_cpu", "trainer.max_steps=3", "train.micro_batch_size=4"])
    )
    kwargs = trainer_kwargs(typed.trainer, typed.deepspeed, typed.train.micro_batch_size)
    assert "slurm_tasks_per_node" not in kwargs and kwargs["max_steps"] == 3
    trainer = pl.Trainer(**kwargs, logger=False, enable_checkpointing=False)
    strategy = trainer.strategy
    assert isinstance(strategy, CPUDeepSpeedStrategy)
    assert trainer.num_devices == 2 and strategy.process_group_backend == "gloo"
    assert strategy.config["train_micro_batch_size_per_gpu"] == 4
    assert type(trainer.precision_plugin).__name__ == "DeepSpeedPrecision"


# --- real ZeRO runs on 2 CPU processes ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from exp3rt.models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny"))


def run_zero(model_dir: Path, out: Path, overrides: list[str]) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    for key in ("MASTER_PORT", "MASTER_ADDR", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK"):
        env.pop(key, None)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            str(model_dir),
            str(out),
            "trainer.max_steps=10",
            "train.lr=1e-2",
            *overrides,
        ],
        env=env,
        cwd=out,
        capture_output=True,
        text=True,
        timeout=240,
    )
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads((out / "result.json").read_text())
    result["wall_s"] = wall
    print(
        f"{overrides}: wall {wall:.1f} s, fit {result['fit_s']:.1f} s, loss {result['losses'][0]:.4f} "
        f"-> {result['losses'][-1]:.4f}"
    )
    return result


def reloaded_logits(model_dir: Path, out: Path) -> torch.Tensor:
    """The ZeRO checkpoint directory → one fp32 state dict (Lightning's utility) → a fresh module."""
    from pytorch_lightning.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict
    from transformers import AutoTokenizer

    single = out / "single.ckpt"
    convert_zero_checkpoint_to_fp32_state_dict(out / "ckpt", single)
    state = torch.load(single, map_location="cpu", weights_only=False)["state_dict"]
    module = build_module(model_dir)
    module.load_state_dict(state, strict=True)
    module.eval()
    with torch.no_grad():
        return module(fixed_batch(AutoTokenizer.from_pretrained(model_dir)))


def check_run(result: dict, out: Path, stage: int, precision: str) -> tuple[dict, dict]:
    losses = result["losses"]
    assert (result["strategy"], result["world_size"], result["backend"]) == (
        "CPUDeepSpeedStrategy",
        2,
        "gloo",
    )
    assert (result["zero_stage"], result["precision"], result["global_step"]) == (stage, precision, 10)
    assert len(losses) == 10 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.1, losses  # it learns the fixed batch
    r0 = torch.load(out / "rank0.pt", weights_only=True)
    r1 = torch.load(out / "rank1.pt", weights_only=True)
    torch.testing.assert_close(r0["logits"], r1["logits"], rtol=0, atol=0)  # the replicas agree
    assert torch.equal(r0["generated"], r1["generated"]) and r0["generated"].shape[1] > 8
    return r0, r1


def test_zero2_trains_on_two_cpu_processes_and_checkpoint_reloads(tiny_model, tmp_path):
    result = run_zero(tiny_model, tmp_path, ["deepspeed=zero2"])
    r0, _ = check_run(result, tmp_path, 2, "32-true")
    assert torch.equal(reloaded_logits(tiny_model, tmp_path), r0["logits"])  # fp32: identical logits


def test_zero3_trains_gathers_for_generation_and_checkpoint_reloads(tiny_model, tmp_path):
    result = run_zero(tiny_model, tmp_path, ["deepspeed=zero3", "deepspeed.gather_for_generation=true"])
    r0, _ = check_run(result, tmp_path, 3, "32-true")
    assert (tmp_path / "ckpt" / "checkpoint").is_dir()
    assert torch.equal(reloaded_logits(tiny_model, tmp_path), r0["logits"])  # fp32: identical logits


@pytest.mark.slow
def test_zero2_bf16_on_cpu(tiny_model, tmp_path):
    result = run_zero(tiny_model, tmp_path, ["deepspeed=zero2", "trainer.precision=bf16-mixed"])
    r0, _ = check_run(result, tmp_path, 2, "bf16-mixed")
    assert result["param_dtype"] == "torch.bfloat16"  # DeepSpeed bf16 computes in bf16
    # the checkpoint holds the fp32 master weights: close to the bf16 model's logits, not equal
    torch.testing.assert_close(reloaded_logits(tiny_model, tmp_path), r0["logits"], rtol=0, atol=0.05)


def test_master_weight_adamw_matches_adamw_in_float32_and_learns_where_bf16_adamw_rounds_away():
    from exp3rt.student.optim import MasterWeightAdamW

    torch.manual_seed(0)
    start = torch.randn(64, 64) * 0.05
    grads = [torch.randn(64, 64).to(torch.bfloat16).float() for _ in range(10)]  # exact in bf16 too

    def run(opt_cls, dtype, **kw):
        p = torch.nn.Parameter(start.clone().to(dtype))
        opt = opt_cls([p], lr=1e-4, weight_decay=0.01, **kw)
        for g in grads:
            p.grad = g.to(dtype)
            opt.step()
        return p.detach().float()

    assert torch.allclose(
        run(MasterWeightAdamW, torch.float32), run(torch.optim.AdamW, torch.float32), atol=1e-7
    )
    start = start.to(torch.bfloat16).float()  # the bf16 model's starting point, exactly
    reference = run(torch.optim.AdamW, torch.float32)
    moved = (reference - start).abs().mean()
    plain_bf16 = run(torch.optim.AdamW, torch.bfloat16)
    master_bf16 = run(MasterWeightAdamW, torch.bfloat16)
    # plain AdamW on bf16 weights: most of ten 1e-4 steps round away
    assert (plain_bf16 == start).float().mean() > 0.5
    assert (plain_bf16 - reference).abs().mean() > 0.3 * moved
    # with float32 master weights the bf16 model holds the float32 run's weights, rounded
    assert torch.equal(master_bf16, reference.to(torch.bfloat16).float())
    assert (
        master_bf16 != start
    ).float().mean() > 0.7  # most weights moved (the rest by less than a bf16 step)


def test_master_weight_adamw_resumes_from_its_state_dict_exactly_in_float32():
    """torch's load_state_dict casts floating state to the parameter's dtype: for bf16 weights that would
    round the master copy and moments to bf16 and then fail on mixed dtypes at the next step."""
    from exp3rt.student.optim import MasterWeightAdamW

    torch.manual_seed(0)
    start = (torch.randn(32, 32) * 0.05).to(torch.bfloat16)
    grads = [torch.randn(32, 32).to(torch.bfloat16) for _ in range(6)]

    def fresh():
        p = torch.nn.Parameter(start.clone())
        return p, MasterWeightAdamW([p], lr=1e-4, weight_decay=0.01)

    p, opt = fresh()
    for g in grads:
        p.grad = g
        opt.step()
    straight = p.detach().clone()
    p, opt = fresh()
    for g in grads[:3]:
        p.grad = g
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    master = saved["state"][0]["master"].clone()
    q = torch.nn.Parameter(p.detach().clone())
    resumed = MasterWeightAdamW([q], lr=1e-4, weight_decay=0.01)
    resumed.load_state_dict(saved)
    state = resumed.state[q]
    assert {state[k].dtype for k in ("master", "exp_avg", "exp_avg_sq")} == {torch.float32}
    assert torch.equal(state["master"], master) and state["step"] == 3
    assert not torch.equal(master, master.to(torch.bfloat16).float())  # bits bf16 would have lost
    for g in grads[3:]:
        q.grad = g
        resumed.step()
    assert q.dtype == torch.bfloat16 and torch.equal(q.detach(), straight)


def test_the_optimizer_follows_precision_and_deepspeed():
    from exp3rt.student.optim import MasterWeightAdamW
    from exp3rt.student.strategies import adam_class

    assert (
        adam_class(None, "bf16-true") is MasterWeightAdamW
        and adam_class(None, "16-true") is MasterWeightAdamW
    )
    assert (
        adam_class(None, "bf16-mixed") is torch.optim.AdamW
        and adam_class(None, "32-true") is torch.optim.AdamW
    )
    assert (
        adam_class({"stage": 2, "offload_optimizer": False}, "bf16-true") is torch.optim.AdamW
    )  # DeepSpeed's own
