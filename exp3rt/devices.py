"""Where a model runs: ``auto`` (the first CUDA GPU when torch sees one, else the CPU) or a torch device,
and handing memory back once a model is done with."""

from __future__ import annotations

import re

from exp3rt.errors import ConfigError

DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"


def check_device(name: str | None, key: str) -> str:
    """The setting's value when it names a device (``DEVICE_PATTERN``), else a :class:`ConfigError` naming
    ``key``; needs no torch, so configs are checked before anything loads."""
    name = str(name or "auto")
    if not re.fullmatch(DEVICE_PATTERN, name):
        raise ConfigError(f"config key '{key}' must be auto, cpu, mps, cuda or cuda:N (got {name!r})")
    return name


def resolve_device(name: str | None, key: str = "eval.device"):
    """The ``torch.device`` for a config value; ``key`` names the setting in the errors."""
    import torch

    name = check_device(name, key)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"config key '{key}' is {name!r} but torch {torch.__version__} sees no CUDA GPU; "
            f"use {key}=auto or cpu"
        )
    return torch.device(name)


def free_memory() -> None:
    """Collect unreachable objects (reference cycles, such as Lightning's trainer and module, wait for the
    cycle collector) and hand cached GPU blocks back to the driver."""
    import gc

    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_machine(cfg) -> None:
    """What this machine must have for a training run, checked before any data work (a GPU trainer used to
    die after ~11 s of data preparation with Lightning's "No supported gpu backend found!", QLoRA after
    ~20 s with a transformers ImportError): a CUDA GPU for a GPU trainer, bitsandbytes for 4-bit QLoRA.
    Dry runs do not call it: cluster presets are checked on machines without a GPU."""
    import importlib.util

    import torch

    tr = cfg.get("trainer")
    if tr is not None and str(tr.accelerator) in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={tr.accelerator} (trainer=gpu, ddp or a deepspeed_zero* preset) "
            "trains on CUDA GPUs, "
            f"but torch {torch.__version__} sees none on this machine: train here with trainer=cpu, or "
            "trainer=deepspeed_cpu "
            "for DeepSpeed ZeRO on CPU; to check a GPU preset without training, add dry_run=true "
            "(exp3rt-pipeline)"
        )
    student = cfg.get("student")
    if (
        student is not None
        and student.get("quantization") == "4bit"
        and importlib.util.find_spec("bitsandbytes") is None
    ):
        raise ConfigError(
            "student.quantization=4bit (QLoRA) needs the bitsandbytes package, which is not installed: "
            "pip install -e '.[qlora]' on a CUDA machine, or train without quantization: "
            "student.quantization=null"
        )
