"""Where a model runs: ``auto`` (the first CUDA GPU when torch sees one, else the CPU) or a torch device,
and handing memory back once a model is done with."""

from __future__ import annotations

import re

DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"


def check_device(name: str | None, key: str) -> str:
    """The setting's value when it names a device (``DEVICE_PATTERN``), else a :class:`ConfigError` naming
    ``key``; needs no torch, so configs are checked before anything loads."""
    from exp3rt.config import ConfigError

    name = str(name or "auto")
    if not re.fullmatch(DEVICE_PATTERN, name):
        raise ConfigError(f"config key '{key}' must be auto, cpu, mps, cuda or cuda:N (got {name!r})")
    return name


def resolve_device(name: str | None, key: str = "eval.device"):
    """The ``torch.device`` for a config value; ``key`` names the setting in the errors."""
    import torch

    from exp3rt.config import ConfigError

    name = check_device(name, key)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key '{key}' is {name!r} but torch {torch.__version__} sees no CUDA GPU; "
                          f"use {key}=auto or cpu")
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
