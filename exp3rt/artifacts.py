"""Artifact provenance: content hashes of inputs, config fingerprints, stage metadata — and crash-safe
writes.

Every stage writes its outputs into a directory together with ``meta.json`` (the stage name, the
resolved config of the stage, the digests of the inputs it read, a fingerprint over both) and the
resolved config as YAML. A later stage compares fingerprints instead of parsing directory names.

Every artifact file is written under a temporary name in its own directory, fsynced and
``os.replace``d into place (:func:`atomic_path` and the ``write_*_atomic`` helpers), so a crash never
leaves a half-written file under the final name. Beside each one a small ``<file>.sha`` records its
size and BLAKE2b digest; :func:`intact` checks a file against it (and, for parquet and JSON, that it
parses) before a stage decides "already done, skip", and warns, naming the file, when it is not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger(__name__)

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
        return {
            k: ("***" if _is_secret_key(k) and v not in (None, "") else scrub_secrets(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [scrub_secrets(v) for v in obj]
    return obj


#: the suffix of the record beside an artifact file: ``{"size": …, "blake2b": …}``
SHA_SUFFIX = ".sha"
#: files up to this size are hashed when checked; larger ones are checked by size (and parquet footer)
DIGEST_CHECK_MAX_BYTES = 512 << 20


def sha_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SHA_SUFFIX)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # e.g. a filesystem that cannot sync directories
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        try:
            os.fsync(f.fileno())
        except OSError:  # a filesystem that cannot sync (e.g. some FUSE mounts): the rename still protects
            pass


def _temp_name(path: Path) -> Path:
    # hidden and without the final suffix: no glob for "*.parquet" and no folder listing picks it up
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def record_file(path: str | Path) -> dict:
    """Write ``<path>.sha`` (atomically) with the file's size and digest, and return that record."""
    path = Path(path)
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:  # size and digest of the same open file, even if another process replaces it
        size = os.fstat(f.fileno()).st_size
        while block := f.read(1 << 20):
            h.update(block)
    rec = {"size": size, "blake2b": h.hexdigest()}
    _replace_with(sha_path(path), lambda tmp: tmp.write_text(json.dumps(rec) + "\n"), record=False)
    return rec


def record_folder(directory: str | Path) -> None:
    """Write a ``.sha`` record beside every file under ``directory`` (e.g. a model folder that a library
    saved), so :func:`folder_intact` checks them later."""
    for p in sorted(q for q in Path(directory).rglob("*") if q.is_file() and not q.name.endswith(SHA_SUFFIX)):
        record_file(p)


def _replace_with(path: Path, write, record: bool) -> None:
    with atomic_path(path, record=record) as tmp:
        write(tmp)


@contextlib.contextmanager
def atomic_path(path: str | Path, record: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends normally, fsync what was written
    there and ``os.replace`` it onto ``path`` (then record its size and digest in ``<path>.sha``). When
    the block raises, the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary file for {path}")
        _fsync_file(tmp)
        if (
            record
        ):  # the old record goes first: a crash after the rename leaves no record that vouches for old bytes
            sha_path(path).unlink(missing_ok=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    if record:
        record_file(path)


def write_text_atomic(path: str | Path, text: str, record: bool = True) -> Path:
    with atomic_path(path, record=record) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any, record: bool = True, **kw: Any) -> Path:
    kw.setdefault("indent", 2)
    kw.setdefault("default", str)
    return write_text_atomic(path, json.dumps(obj, **kw), record=record)


def write_parquet_atomic(frame: Any, path: str | Path, record: bool = True, **kw: Any) -> Path:
    """``frame.to_parquet(path)`` through a temporary file (``index=False`` unless told)."""
    kw.setdefault("index", False)
    with atomic_path(path, record=record) as tmp:
        frame.to_parquet(tmp, **kw)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (an old folder there is
    moved aside first and removed after), on failure it is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = _temp_name(path)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        old = None
        if path.exists():
            old = _temp_name(path.with_name(path.name + ".old"))
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def files_into(directory: str | Path, last: Iterable[str] = ("config.json",)) -> Iterator[Path]:
    """Yield a temporary folder beside ``directory``; on success move each file written there into
    ``directory`` with ``os.replace`` (the ``last`` names last: they are what marks the folder as
    complete), keeping any other file ``directory`` already holds. For a model folder that a library
    saves (``save_pretrained``) into a user's folder, where :func:`atomic_dir` would replace the folder."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(directory)
    tmp.mkdir()
    try:
        yield tmp
        files = sorted(
            (p for p in tmp.rglob("*") if p.is_file()), key=lambda p: (p.name in set(last), str(p))
        )
        for p in files:
            _fsync_file(p)
            dest = directory / p.relative_to(tmp)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, dest)
        _fsync_dir(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def damage(path: str | Path, check_digest: bool | None = None) -> str | None:
    """Why ``path`` cannot be trusted as a finished artifact (``None`` when it can): missing, its size
    or digest differs from ``<path>.sha``, or (parquet, JSON) it does not parse. A file without a
    ``.sha`` record (written before records were kept) is checked by parsing only."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    rec = None
    side = sha_path(path)
    if side.is_file():
        try:
            rec = json.loads(side.read_text())
        except (OSError, ValueError):
            return f"its record {side.name} is unreadable"
    if rec is not None:
        if rec.get("size") != size:
            return f"{size} bytes where {rec.get('size')} were written"
        if check_digest is None:
            check_digest = size <= DIGEST_CHECK_MAX_BYTES
        if check_digest and rec.get("blake2b") != file_digest(path):
            return "its checksum differs from the one recorded when it was written"
        if check_digest:
            return None  # the bytes are the ones written: no need to parse them
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.read_metadata(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
    except Exception as e:  # noqa: BLE001 - any parse failure means the file is damaged
        return f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None


def intact(path: str | Path, what: str = "", check_digest: bool | None = None) -> bool:
    """True when ``path`` exists and passes :func:`damage`; a file that exists but fails is reported
    with a warning naming it (the caller rebuilds it)."""
    path = Path(path)
    if not path.exists():
        return False
    why = damage(path, check_digest)
    if why is None:
        return True
    log.warning("damaged artifact %s: %s; rebuilding %s", path, why, what or "it")
    return False


def damaged_files(directory: Path, required: Iterable[str] = ()) -> list[tuple[Path, str]]:
    """``(file, why)`` for every damaged file of a finished stage folder: the ``required`` names and
    every file that has a ``.sha`` record beside it."""
    directory = Path(directory)
    recorded = {str(p.relative_to(directory))[: -len(SHA_SUFFIX)] for p in directory.rglob("*" + SHA_SUFFIX)}
    out = []
    for name in sorted(recorded | set(required)):
        why = damage(directory / name)
        if why is not None:
            out.append((directory / name, why))
    return out


def folder_intact(directory: Path, required: Iterable[str] = (), what: str = "") -> bool:
    """True when no file of the finished folder ``directory`` is damaged (see :func:`damaged_files`);
    otherwise warn, naming each damaged file, and return False."""
    bad = damaged_files(directory, required)
    for path, why in bad:
        log.warning("damaged artifact %s: %s; rebuilding %s", path, why, what or str(directory))
    return not bad


def discard(directory: Path) -> None:
    """Move a damaged stage folder out of the way (renamed, then removed) so it can be rebuilt."""
    directory = Path(directory)
    if directory.exists():
        aside = _temp_name(directory.with_name(directory.name + ".damaged"))
        os.replace(directory, aside)
        shutil.rmtree(aside, ignore_errors=True)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, with secrets removed."""
    container = scrub_secrets(to_container(cfg))
    write_text_atomic(path, OmegaConf.to_yaml(OmegaConf.create(container)))


def write_meta(
    directory: Path, stage: str, config: Any, inputs: dict[str, str], fp: str, **extra: Any
) -> None:
    meta = {
        "stage": stage,
        "fingerprint": fp,
        "format_version": FORMAT_VERSION,
        "inputs": inputs,
        "config": scrub_secrets(to_container(config)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    write_json_atomic(directory / "meta.json", meta)


def read_meta(directory: Path) -> dict | None:
    """The stage's ``meta.json``; ``None`` when it is missing, or damaged (with a warning)."""
    p = Path(directory) / "meta.json"
    if not p.is_file():
        return None
    if not intact(p, f"the stage in {Path(directory).name}"):
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
