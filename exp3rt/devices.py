"""Where a model runs: ``auto`` (the first CUDA GPU when torch sees one, else the CPU) or a torch device."""

from __future__ import annotations

import re

DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"


def resolve_device(name: str | None, key: str = "eval.device"):
    """The ``torch.device`` for a config value; ``key`` names the setting in the errors."""
    import torch

    from exp3rt.config import ConfigError

    name = str(name or "auto")
    if not re.fullmatch(DEVICE_PATTERN, name):
        raise ConfigError(f"config key '{key}' must be auto, cpu, mps, cuda or cuda:N (got {name!r})")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key '{key}' is {name!r} but torch {torch.__version__} sees no CUDA GPU; "
                          f"use {key}=auto or cpu")
    return torch.device(name)
