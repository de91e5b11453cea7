"""A CSV logger whose history survives a resume.

Lightning's ``CSVLogger`` (pytorch-lightning 2.6, lightning_fabric's ``_ExperimentWriter``) deletes
``metrics.csv`` when its log folder is not empty, so a run resumed after a crash lost every loss it had
logged. This writer keeps the file and appends. Rows logged after the checkpoint a run resumes from
(the crashed session trained past it; those steps are trained again) are cut first, so each step
appears once. Written against pytorch-lightning 2.6 (``ExperimentWriter``, ``CSVLogger.experiment``);
the plain ``CSVLogger`` is the fallback when those names are missing.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def trim_history(metrics_csv: Path, resume_step: int) -> int:
    """Drop the rows of ``metrics_csv`` logged at ``step >= resume_step`` (they are trained again after the
    resume); return how many were dropped. The file is rewritten atomically."""
    if not metrics_csv.is_file():
        return 0
    with open(metrics_csv, newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    kept = [r for r in rows if not r.get("step") or int(float(r["step"])) < resume_step]
    if len(kept) == len(rows):
        return 0
    tmp = metrics_csv.with_name(f".{metrics_csv.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(kept)
    os.replace(tmp, metrics_csv)
    return len(rows) - len(kept)


def csv_logger(run_dir: Path, resuming: bool, resume_step: int | None = None):
    """``CSVLogger(save_dir=run_dir, name="csv", version=0)`` that, when ``resuming``, appends to the
    existing ``metrics.csv`` (cut back to ``resume_step`` when the checkpoint's step is known) instead of
    deleting it; a fresh run in an old run dir starts a fresh history."""
    from pytorch_lightning.loggers import CSVLogger

    metrics_csv = Path(run_dir) / "csv" / "version_0" / "metrics.csv"
    if not resuming:
        metrics_csv.unlink(missing_ok=True)
    elif resume_step is not None and resume_step >= 0:
        dropped = trim_history(metrics_csv, resume_step)
        if dropped:
            log.info(
                "metrics.csv: %d rows logged after step %d are trained again and were cut",
                dropped,
                resume_step,
            )
    try:
        from pytorch_lightning.loggers.csv_logs import ExperimentWriter
        from pytorch_lightning.loggers.logger import rank_zero_experiment
    except ImportError:  # another Lightning: its own behaviour (a resume may start a new metrics.csv)
        log.warning("pytorch-lightning %s: CSV history is not kept across a resume", _pl_version())
        return CSVLogger(save_dir=str(run_dir), name="csv", version=0)

    class AppendingWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:  # keep metrics.csv: a resumed run appends to it
            if os.path.isfile(self.metrics_file_path):
                with open(self.metrics_file_path, newline="") as f:
                    self.metrics_keys = list(csv.DictReader(f).fieldnames or [])

    class AppendingCSVLogger(CSVLogger):
        @property
        @rank_zero_experiment
        def experiment(self):
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = AppendingWriter(log_dir=self.log_dir)
            return self._experiment

    return AppendingCSVLogger(save_dir=str(run_dir), name="csv", version=0)


def _pl_version() -> str:
    import pytorch_lightning

    return pytorch_lightning.__version__
