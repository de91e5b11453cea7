"""Artifact provenance: content hashes of inputs, config fingerprints, stage metadata.

Every stage writes its outputs into a directory together with ``meta.json`` (the stage name, the
resolved config of the stage, the digests of the inputs it read, a fingerprint over both) and the
resolved config as YAML. A later stage compares fingerprints instead of parsing directory names.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

#: Bump when the on-disk layout of prepared data changes, so stale caches are not reused.
FORMAT_VERSION = 1

# api_key, secret, password, authorization, or a name ending in "token" (hf_token, wandb_token) — but
# not counts such as max_tokens or tokens_per_minute
_SECRET_KEY = re.compile(r"(api[_-]?key|secret|password|authorization|token$)", re.IGNORECASE)


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """BLAKE2b-128 of a file's bytes (streamed)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def path_digest(path: str | Path) -> str:
    """Digest of a file, or of every file under a directory (names and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    h = hashlib.blake2b(digest_size=16)
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(path)).encode())
        h.update(file_digest(p).encode())
    return h.hexdigest()


def to_container(cfg: Any) -> Any:
    if isinstance(cfg, DictConfig | ListConfig):
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return cfg


def fingerprint(*parts: Any) -> str:
    """A stable digest of JSON-serialisable parts (configs are resolved first)."""
    payload = json.dumps([to_container(p) for p in parts], sort_keys=True, default=str)
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


def _is_secret_key(key: Any) -> bool:
    # `api_key_env` names an environment variable: a name, not a secret
    return bool(_SECRET_KEY.search(str(key))) and not str(key).endswith("_env")


def scrub_secrets(obj: Any) -> Any:
    """Replace values of secret-looking keys (api_key, token, password, …) by ``"***"``."""
    if isinstance(obj, dict):
        return {k: ("***" if _is_secret_key(k) and v not in (None, "") else scrub_secrets(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub_secrets(v) for v in obj]
    return obj


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, with secrets removed."""
    container = scrub_secrets(to_container(cfg))
    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.create(container)))


def write_meta(directory: Path, stage: str, config: Any, inputs: dict[str, str], fp: str, **extra: Any) -> None:
    meta = {
        "stage": stage,
        "fingerprint": fp,
        "format_version": FORMAT_VERSION,
        "inputs": inputs,
        "config": scrub_secrets(to_container(config)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    (directory / "meta.json").write_text(json.dumps(meta, indent=2, default=str))


def read_meta(directory: Path) -> dict | None:
    p = Path(directory) / "meta.json"
    if not p.is_file():
        return None
    return json.loads(p.read_text())


class StagingDir:
    """Write into ``<final>.tmp-<pid>`` and rename into place on success, so a crash never leaves a
    half-written artifact that a later run would mistake for a finished one."""

    def __init__(self, final: Path):
        self.final = Path(final)
        self.tmp = self.final.with_name(f"{self.final.name}.tmp-{os.getpid()}")

    def __enter__(self) -> Path:
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.final.exists():  # another process finished the same artifact first: keep theirs
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        os.replace(self.tmp, self.final)


def existing(paths: Iterable[str | Path | None]) -> list[Path]:
    return [Path(p) for p in paths if p]
