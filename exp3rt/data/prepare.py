"""Turn a dataset config into a canonical, cached artifact directory.

``<paths.data_dir>/<dataset.name>-<fingerprint[:12]>/`` holds ``interactions.parquet``,
``items.parquet``, ``extras/<name>.parquet``, ``data_report.{json,md}``, ``dataset.yaml`` (the resolved
config) and ``meta.json`` (fingerprint over the config and the content digests of the input files).
A second call with the same config and the same input bytes reloads the directory instead of parsing
the sources again; a changed input file or config gives a new fingerprint and a new directory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from exp3rt.artifacts import (
    FORMAT_VERSION,
    StagingDir,
    discard,
    fingerprint,
    folder_intact,
    path_digest,
    read_meta,
    save_config,
    write_meta,
    write_parquet_atomic,
)
from exp3rt.config import Loader
from exp3rt.data.files import require_file
from exp3rt.data.loaders import load_dataset
from exp3rt.data.problems import InputProblems
from exp3rt.data.release import no_release_folder
from exp3rt.data.schema import Dataset, conform_interactions, conform_items, scale_of

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    directory: Path
    fingerprint: str
    dataset: Dataset
    report: dict
    reused: bool


def input_digests(cfg) -> dict[str, str]:
    """Content digests of every file the dataset config reads."""
    out: dict[str, str] = {}
    if cfg.path:
        root = Path(cfg.path)
        if not root.exists():
            if Loader(cfg.loader) == Loader.exp3rt_release:
                raise FileNotFoundError(no_release_folder(cfg))
            raise FileNotFoundError(f"dataset.path does not exist: {root} (dataset '{cfg.name}')")
        if Loader(cfg.loader) == Loader.exp3rt_release and root.is_dir():
            for key, name in cfg.release.items():
                if name:
                    p = root / name
                    if not p.exists():
                        raise FileNotFoundError(f"dataset.release.{key} names a missing file: {p}")
                    out[f"release.{key}"] = path_digest(p)
        else:
            if Loader(cfg.loader) in (Loader.amazon2018, Loader.tabular):  # the loaders that read one file
                require_file(root, "dataset.path", cfg)  # a folder: say so before digesting all of it
            out["path"] = path_digest(root)
    if cfg.meta_path:
        meta = Path(cfg.meta_path)
        if not meta.exists():
            raise FileNotFoundError(f"dataset.meta_path does not exist: {meta} (dataset '{cfg.name}')")

        if Loader(cfg.loader) in (Loader.amazon2018, Loader.tabular):
            require_file(meta, "dataset.meta_path", cfg)
        out["meta_path"] = path_digest(meta)
    return out


def dataset_fingerprint(cfg, inputs: dict[str, str]) -> str:
    return fingerprint("dataset", FORMAT_VERSION, cfg, inputs)


def prepare_dataset(cfg, data_root: str | Path, force: bool = False) -> PreparedData:
    """Load (or reload) the dataset described by the validated ``cfg`` under ``data_root``."""
    inputs = input_digests(cfg)
    fp = dataset_fingerprint(cfg, inputs)
    directory = Path(data_root) / f"{cfg.name}-{fp[:12]}"
    meta = read_meta(directory)
    if meta is not None and meta.get("fingerprint") == fp and not force:
        if folder_intact(
            directory, ("interactions.parquet", "items.parquet"), f"the prepared dataset {directory.name}"
        ):
            log.info("reusing prepared dataset %s", directory)
            return PreparedData(directory, fp, _reload(cfg, directory, meta), meta.get("report", {}), True)
    if directory.exists() and not force and (meta is None or meta.get("fingerprint") == fp):
        discard(directory)  # damaged (a warning named the file): rebuilt below

    dataset, problems = load_dataset(cfg, InputProblems(strict=bool(cfg.strict)))
    pa.default_memory_pool().release_unused()  # hand the loader's scratch memory back before writing
    summary = dataset.summary()
    with StagingDir(directory) as tmp:
        write_parquet_atomic(dataset.interactions, tmp / "interactions.parquet")
        write_parquet_atomic(dataset.items, tmp / "items.parquet")
        if dataset.extras:
            (tmp / "extras").mkdir()
            for name, frame in dataset.extras.items():
                write_parquet_atomic(frame, tmp / "extras" / f"{name}.parquet")
        problems.write(tmp, summary)
        save_config(cfg, tmp / "dataset.yaml")
        report = {"summary": summary, **problems.to_dict()}
        write_meta(
            tmp,
            "data",
            cfg,
            inputs,
            fp,
            report={k: report[k] for k in ("summary", "skipped_total", "skipped", "notes", "inputs")},
        )
    if problems.total_skipped:
        log.warning(
            "dataset %s: %d record(s) skipped (lenient mode); see %s/data_report.md",
            cfg.name,
            problems.total_skipped,
            directory,
        )
    return PreparedData(directory, fp, dataset, read_meta(directory)["report"], False)


def _reload(cfg, directory: Path, meta: dict) -> Dataset:
    extras = {}
    if (directory / "extras").is_dir():
        extras = {p.stem: pd.read_parquet(p) for p in sorted((directory / "extras").glob("*.parquet"))}
    summary = meta.get("report", {}).get("summary", {})
    return Dataset(
        name=cfg.name,
        domain=cfg.domain,
        scale=scale_of(cfg),
        interactions=conform_interactions(pd.read_parquet(directory / "interactions.parquet")),
        items=conform_items(pd.read_parquet(directory / "items.parquet")),
        synthetic=bool(summary.get("synthetic", Loader(cfg.loader) == Loader.synthetic)),
        extras=extras,
    )
