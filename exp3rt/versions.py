"""The library ranges exp3rt was tested with, said at start-up when a run is outside one.

The ranges are the ``pyproject.toml`` requirements of the installed ``exp3rt`` (one source: pip enforces
them at install, this check catches a later ``pip install -U``). Code that reaches into a library's
internals names it here, so the warning says what may break: the in-place KV cache subclasses
transformers' cache layers (exp3rt/inference/kv_cache.py; EXP3RT_KV_CACHE=plain forces its fallback), the
CPU DeepSpeed strategy overrides Lightning and DeepSpeed hooks (exp3rt/student/strategies.py), the CSV
history subclasses Lightning's CSV writer (exp3rt/student/csv_history.py), and the vLLM backend reads its
log-probabilities (exp3rt/inference/vllm_backend.py). Each has a plain fallback or fails with a sentence.
"""

from __future__ import annotations

import importlib.metadata
import logging

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

log = logging.getLogger(__name__)

#: what each pinned library's range protects
REACHED_INTO = {
    "transformers": "the in-place KV cache (exp3rt/inference/kv_cache.py) subclasses its cache layers; "
    "outside the range generation uses its plain DynamicCache",
    "peft": "LoRA adapters are built, saved, merged and reloaded through it",
    "deepspeed": "the CPU DeepSpeed strategy and ZeRO-3 LoRA init (exp3rt/student/strategies.py, "
    "lightning.py)",
    "pytorch-lightning": "the DeepSpeed strategy hooks and the CSV history "
    "(exp3rt/student/strategies.py, csv_history.py)",
    "vllm": "the vLLM backend's log-probability readout (exp3rt/inference/vllm_backend.py)",
}


def _installed(name: str) -> Version | None:
    try:
        return Version(importlib.metadata.version(name))
    except (importlib.metadata.PackageNotFoundError, InvalidVersion):
        return None


def tested_ranges() -> dict[str, str]:
    """``{package: specifier}`` from the installed exp3rt's requirements (extras included)."""
    try:
        lines = importlib.metadata.requires("exp3rt") or []
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return {}
    out = {}
    for line in lines:
        req = Requirement(line)
        if req.name in REACHED_INTO and str(req.specifier):
            out[req.name] = str(req.specifier)
    return out


def untested_versions(installed=_installed) -> list[str]:
    """One sentence per reached-into library whose installed version is outside its tested range."""
    out = []
    for name, spec in sorted(tested_ranges().items()):
        version = installed(name)
        if version is None:
            continue
        from packaging.specifiers import SpecifierSet

        if not SpecifierSet(spec).contains(version, prereleases=True):
            out.append(
                f"{name} {version} is outside the range exp3rt was tested with ({spec}): "
                f"{REACHED_INTO[name]}; "
                f"pip install '{name}{spec}'"
            )
    return out


def warn_untested_versions() -> list[str]:
    """Log :func:`untested_versions` once per process (entry points call it at start-up)."""
    global _warned
    if _warned:
        return []
    _warned = True
    found = untested_versions()
    for line in found:
        log.warning("%s", line)
    return found


_warned = False
