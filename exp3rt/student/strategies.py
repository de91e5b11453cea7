"""Training strategies: the ``trainer`` and ``deepspeed`` config groups turned into what
``pytorch_lightning.Trainer`` takes.

* :func:`build_strategy` — ``"auto"`` (one CPU or GPU), ``"ddp"``, or a DeepSpeed strategy built from
  our own Lightning-dialect ZeRO dict (:func:`deepspeed_config`).
* :func:`trainer_kwargs` — every ``Trainer`` argument from the ``trainer`` group, strategy included.
* :class:`CPUDeepSpeedStrategy` — DeepSpeed ZeRO on CPU processes over gloo, for tests and CPU-only
  debugging of the DeepSpeed code path; on GPUs the stock ``DeepSpeedStrategy`` is used.
* :func:`generation_context` — gathers ZeRO-3 shards around in-training generation.

Why our own dict rather than a Hugging Face DeepSpeed JSON: Lightning raises if the dict sets
``gradient_accumulation_steps`` (it fills it from ``trainer.accumulate_grad_batches``) and hands
HF-style ``"auto"`` values to DeepSpeed unresolved. ``exp3rt.config.validate`` rejects both before any
model loads; :func:`deepspeed_config` checks again for callers that skip it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy, Strategy

from exp3rt.config import ConfigError, find_auto
from exp3rt.student.optim import MasterWeightAdamW


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's ``DeepSpeedStrategy`` on ``accelerator="cpu"``: ZeRO-1/2/3 across CPU processes over
    gloo, in fp32 or bf16 (fp16 needs a GPU).

    For tests and CPU-only debugging of the DeepSpeed code path (sharding, checkpoint layout, ZeRO-3
    gathering); it is not a way to train fast. On GPUs :func:`build_strategy` returns the stock
    strategy. Two differences from the stock one:

    * ``setup_environment`` skips the stock check that the accelerator is CUDA;
    * ``setup_distributed`` gives the CPU devices indices (``cpu:0``, ``cpu:1`` …), because the stock
      strategy checks that device indices equal local ranks and passes ``root_device.index`` to
      ``deepspeed.initialize`` as the device rank.

    Processes start as with DDP: Lightning re-runs the launching script once per extra device, so the
    script (not an interactive session or a pytest process) must be the entry point.
    """

    def setup_environment(self) -> None:
        # DDPStrategy.setup_environment: accelerator.setup_device, then self.setup_distributed()
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        assert self.parallel_devices is not None
        self.parallel_devices = [torch.device("cpu", i) for i in range(len(self.parallel_devices))]
        super().setup_distributed()

    def _init_deepspeed_distributed(self) -> None:
        # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce op when it starts (about 40 s and
        # a C++ compiler on a fresh machine). Only its inference all-reduce uses that op; training
        # collectives go through torch.distributed (gloo), so start without it.
        import importlib

        # by name: the attribute deepspeed.comm.torch is the torch package (star-imported), not the module
        ds_torch_comm = importlib.import_module("deepspeed.comm.torch")
        build = getattr(ds_torch_comm, "build_shm_op", None)
        if build is not None:
            ds_torch_comm.build_shm_op = lambda: None
        try:
            super()._init_deepspeed_distributed()
        finally:
            if build is not None:
                ds_torch_comm.build_shm_op = build


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def deepspeed_config(deepspeed_cfg: Any, precision: str, micro_batch_size: int | None = None) -> dict:
    """The Lightning-dialect DeepSpeed dict for the ``deepspeed`` group (a ``DeepSpeedConf``).

    It holds ``zero_optimization`` (stage, offload, bucket sizes), ``zero_allow_untested_optimizer``
    (the module's torch optimizer is used as is), the ``bf16``/``fp16`` section for ``precision``,
    ``train_micro_batch_size_per_gpu`` (only for DeepSpeed's throughput log; with it set Lightning
    need not look at a dataloader) and ``deepspeed.extra`` merged last. Never
    ``gradient_accumulation_steps`` (Lightning fills it) nor ``"auto"``.
    """
    ds = _plain(deepspeed_cfg)
    stage = ds.get("stage")
    if stage not in (1, 2, 3):
        raise ConfigError(
            f"config key 'deepspeed.stage' must be 1, 2 or 3 for a DeepSpeed strategy (got {stage})"
        )
    zero: dict[str, Any] = {
        "stage": stage,
        "contiguous_gradients": ds.get("contiguous_gradients", True),
        "overlap_comm": ds.get("overlap_comm", True),
        "reduce_bucket_size": ds.get("reduce_bucket_size", 200_000_000),
    }
    if stage < 3:
        zero["allgather_bucket_size"] = ds.get("allgather_bucket_size", 200_000_000)
    else:
        for key in (
            "sub_group_size",
            "stage3_prefetch_bucket_size",
            "stage3_param_persistence_threshold",
            "stage3_max_live_parameters",
            "stage3_gather_16bit_weights_on_model_save",
        ):
            if ds.get(key) is not None:
                zero[key] = ds[key]
    for key in ("offload_optimizer", "offload_param"):
        device = ds.get(key)
        if device is not None:
            zero[key] = {"device": str(device), "pin_memory": ds.get("pin_memory", True)}
            if device == "nvme":
                zero[key]["nvme_path"] = ds.get("nvme_path", "/local_nvme")
    cfg: dict[str, Any] = {"zero_allow_untested_optimizer": True, "zero_optimization": zero}
    if precision.startswith("bf16"):
        cfg["bf16"] = {"enabled": True}
    elif precision.startswith("16"):
        # Lightning's defaults: dynamic loss scaling starting at 2**16
        cfg["fp16"] = {
            "enabled": True,
            "loss_scale": 0,
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        }
    if micro_batch_size is not None:
        cfg["train_micro_batch_size_per_gpu"] = int(micro_batch_size)
    cfg = _merge(cfg, ds.get("extra") or {})
    if "gradient_accumulation_steps" in cfg:
        raise ConfigError(
            "config key 'deepspeed.extra.gradient_accumulation_steps' must not be set: Lightning sets "
            "it from "
            "trainer.accumulate_grad_batches and raises if the dict has it"
        )
    auto = find_auto(cfg, "deepspeed")
    if auto:
        raise ConfigError(
            f"config key '{auto}' is \"auto\": Lightning hands the dict to DeepSpeed unresolved; give "
            "a number"
        )
    return cfg


def build_strategy(
    trainer_cfg: Any, deepspeed_cfg: Any = None, micro_batch_size: int | None = None
) -> str | Strategy:
    """What ``Trainer(strategy=...)`` takes for the ``trainer`` group (and the ``deepspeed`` group).

    ``"auto"`` for ``trainer.strategy=auto`` (one CPU or GPU), ``"ddp"`` for ddp (a ``DDPStrategy``
    when ``trainer.process_group_backend`` is set), and for deepspeed a ``DeepSpeedStrategy`` on GPUs or
    a :class:`CPUDeepSpeedStrategy` on ``trainer.accelerator=cpu``, built from :func:`deepspeed_config`.
    ``micro_batch_size`` (``train.micro_batch_size``) becomes ``logging_batch_size_per_gpu`` and the
    dict's ``train_micro_batch_size_per_gpu``, so Lightning does not need a dataloader to infer it.
    """
    tr = _plain(trainer_cfg)
    name = str(tr.get("strategy", "auto"))
    backend = tr.get("process_group_backend")
    if name == "auto":
        return "auto"
    if name == "ddp":
        return DDPStrategy(process_group_backend=backend) if backend else "ddp"
    if name != "deepspeed":
        raise ConfigError(
            f"config key 'trainer.strategy': unknown strategy '{name}'; allowed: [auto, ddp, deepspeed]"
        )
    ds = _plain(deepspeed_cfg)
    if not ds or ds.get("stage") is None:
        raise ConfigError(
            "config key 'deepspeed': trainer.strategy=deepspeed needs a DeepSpeed config; "
            "pick deepspeed=zero2, zero2_offload or zero3"
        )
    precision = str(tr.get("precision", "32-true"))
    cpu = str(tr.get("accelerator", "cpu")) == "cpu"
    if cpu and precision.startswith("16"):
        raise ConfigError(
            f"config key 'trainer.precision': trainer.precision={precision} needs a GPU; use "
            "bf16-mixed or 32-true on CPU"
        )
    cls = CPUDeepSpeedStrategy if cpu else DeepSpeedStrategy
    return cls(
        config=deepspeed_config(ds, precision, micro_batch_size),
        logging_batch_size_per_gpu=int(micro_batch_size or 1),
        process_group_backend=backend,
    )


#: ``trainer`` group keys that are not ``Trainer`` arguments.
# keys of the trainer group that are not Trainer arguments (the strategy is built from the first two; the
# checkpoint cadence configures the run's ModelCheckpoint)
_NOT_TRAINER_ARGS = ("strategy", "process_group_backend", "slurm_tasks_per_node", "checkpoint_every_n_steps")


def trainer_kwargs(trainer_cfg: Any, deepspeed_cfg: Any = None, micro_batch_size: int | None = None) -> dict:
    """``pytorch_lightning.Trainer`` keyword arguments from the validated ``trainer`` group.

    Nulls are left out (Lightning's own defaults apply); ``strategy`` comes from :func:`build_strategy`.
    """
    tr = _plain(trainer_cfg)
    kwargs = {k: (str(v) if k == "accelerator" else v) for k, v in tr.items() if k not in _NOT_TRAINER_ARGS}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    kwargs["strategy"] = build_strategy(tr, deepspeed_cfg, micro_batch_size)
    return kwargs


def adam_class(deepspeed_cfg: Any = None, precision: str | None = None) -> type[torch.optim.Optimizer]:
    """The Adam a LightningModule should build: DeepSpeed's CPU Adam when the optimizer is offloaded
    (DeepSpeed refuses a torch optimizer there); AdamW with float32 master weights when the weights
    themselves are 16-bit (``precision`` ``bf16-true``/``16-true`` without DeepSpeed, which keeps its own:
    :mod:`exp3rt.student.optim`); ``torch.optim.AdamW`` otherwise."""
    ds = _plain(deepspeed_cfg) or {}
    if ds.get("stage") is not None and ds.get("offload_optimizer"):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam
    if ds.get("stage") is None and str(precision) in ("bf16-true", "16-true"):
        return MasterWeightAdamW
    return torch.optim.AdamW


def generation_context(module: torch.nn.Module) -> contextlib.AbstractContextManager:
    """A context in which ``module.generate`` sees full weights.

    Under ZeRO-3 each rank holds a shard of every parameter; this gathers them all on every rank
    (read-only, ``deepspeed.zero.GatheredParameters``), which needs the whole model to fit on one
    device (``deepspeed.gather_for_generation=true`` declares that). Every rank must enter it
    together. Elsewhere it does nothing.
    """
    params = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
