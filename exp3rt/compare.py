"""``exp3rt-compare``: many runs' ``metrics.json`` (or W&B runs) → one markdown table, a JSON file and a PNG.

A run is a directory holding ``metrics.json`` (``exp3rt-pipeline``, ``exp3rt-evaluate`` and
``exp3rt-baselines`` all write one) or a Hydra job directory (``.hydra/``) that has none — a job that
crashed; it is listed as failed with its path, never dropped. A multirun directory is searched for its
job directories, and the jobs its sweep defined but never started (the basic launcher stops at the
first crash) are listed too.

Every number is compared under its flat name — ``rating/<model>/<key>``, ``rerank/<before|after>/<metric>``,
``retrieval/<model>/<metric>``, ``efficiency/<key>`` (:func:`exp3rt.pipeline.flat_metrics`), the same
names W&B summaries, sweeps and ``objective`` use — plus ``rating/best_baseline/<key>`` (the rating
baseline with the lowest RMSE on that run's test pairs) and ``teacher/<key>`` (calls, tokens, cost and
time it took the teacher to make the annotations the run used: :func:`teacher_bill`). A run that lacks
a metric shows "–", never 0.

Runs are labelled by what differs between them: the Hydra group choices and command-line overrides
whose values are not the same in every run (``ablation=no_reasoning``), or the keys given with ``--by``
(a group, an override key or any dotted key of the run's resolved ``config.yaml``).

The experiments/ recipes build on :func:`compare` and on :func:`entity_table` (one run's models, or a
reranker's first stage and reranked rows, as table rows).
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exp3rt.artifacts import write_json_atomic, write_text_atomic
from exp3rt.evaluation.plots import metric_bars
from exp3rt.evaluation.report import markdown_table
from exp3rt.pipeline import flat_metrics

log = logging.getLogger(__name__)

# the columns a user sees without --metrics (each only when some run has it)
DEFAULT_METRICS = (
    "rating/student_expected/rmse",
    "rating/student_expected/mae",
    "rating/student_expected/parse_rate",
    "rating/global_mean/rmse",
    "rating/best_baseline/rmse",
    "rerank/before/ndcg@10",
    "rerank/after/ndcg@10",
)
# when none of the defaults exist (e.g. exp3rt-baselines runs): every model's RMSE, then retrievers' nDCG@10
FALLBACK_PATTERNS = ("rating/*/rmse", "retrieval/*/ndcg@10")

TEACHER_KEYS = ("calls", "cached", "failed", "prompt_tokens", "completion_tokens", "cost_usd", "wall_s")
# settings that never make two runs different experiments (where a run was written, progress bars)
_IGNORED_SETTINGS = re.compile(r"^(hydra[./]|paths\.|progress$|threads$|run_name$|experiment_name$|local$)")
_JOB_MARKERS = ("metrics.json", ".hydra")
_SKIP_DIRS = {"wandb", "csv", "checkpoints", "adapter", "__pycache__", ".hydra", ".git"}


@dataclass
class Run:
    """One run as exp3rt-compare sees it: where it is, what it was, and its numbers (flat names)."""

    source: str  # a directory, or a W&B run path entity/project/id
    status: str = "ok"  # ok | failed | not started | dry run | a W&B state other than finished
    task: str | None = None
    name: str = ""  # a fallback label: the experiment name or the directory name
    choices: dict[str, str] = field(default_factory=dict)  # Hydra group choices (or W&B tags key:value)
    overrides: list[str] = field(default_factory=list)  # command-line overrides
    flat: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # best baseline, retriever, number of candidates ...
    error: str | None = None
    config: dict[str, Any] | None = None  # flattened dotted config, loaded on demand
    config_path: str | None = None
    label: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def settings(self) -> dict[str, str]:
        """Group choices then command-line overrides as ``key -> value`` (an override of a group wins)."""
        out = {k: str(v) for k, v in self.choices.items() if v is not None and not _IGNORED_SETTINGS.match(k)}
        for o in self.overrides:
            key, value = split_override(o)
            if key and not _IGNORED_SETTINGS.match(key):
                out[key] = value
        return out

    def lookup(self, key: str) -> str | None:
        """The value of a --by key: a group choice or override, else a dotted key of the resolved config."""
        s = self.settings()
        if key in s:
            return s[key]
        cfg = self.load_config()
        if key in cfg:
            return _cell_text(cfg[key])
        if f"{key}.name" in cfg:  # `--by teacher` on a run that has no Hydra choices (W&B): teacher.name
            return _cell_text(cfg[f"{key}.name"])
        return None

    def load_config(self) -> dict[str, Any]:
        if self.config is None:
            self.config = {}
            if self.config_path and Path(self.config_path).is_file():
                import yaml

                try:
                    self.config = flatten(yaml.safe_load(Path(self.config_path).read_text()) or {})
                except yaml.YAMLError as e:
                    log.warning("cannot read %s: %s", self.config_path, e)
        return self.config

    def value(self, metric: str) -> float | None:
        v = self.flat.get(metric)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def split_override(text: str) -> tuple[str, str]:
    """``+a.b=c`` → ``("a.b", "c")``; ``~key`` → ``("key", "<deleted>")``."""
    text = str(text).strip()
    if text.startswith("~"):
        return text.lstrip("~").split("=", 1)[0], "<deleted>"
    key, _, value = text.lstrip("+").partition("=")
    value = value.strip()
    # a multirun job's overrides say True/False where the command line said true/false
    return key.strip(), value.lower() if value in ("True", "False") else value


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as dotted keys (lists stay values)."""
    out: dict[str, Any] = {}
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out.update(flatten(v, key))
            else:
                out[key] = v
    elif prefix:
        out[prefix] = node
    return out


def _cell_text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ",".join(_cell_text(x) for x in v) + "]"
    return str(v)


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


# ------------------------------------------------------------------------------------------- reading runs


def derived(flat: dict[str, float]) -> tuple[dict[str, float], dict[str, Any]]:
    """``rating/best_baseline/<key>``: the non-student rating model with the lowest RMSE on the run's
    pairs."""
    rmse = {
        k.split("/")[1]: v
        for k, v in flat.items()
        if k.startswith("rating/")
        and k.endswith("/rmse")
        and not k.split("/")[1].startswith("student")
        and k.split("/")[1] != "best_baseline"
        and v is not None
        and not math.isnan(v)
    }
    if not rmse:
        return {}, {}
    best = min(rmse, key=rmse.get)
    out = {
        f"rating/best_baseline/{k.split('/', 2)[2]}": v
        for k, v in flat.items()
        if k.startswith(f"rating/{best}/")
    }
    return out, {"best_baseline": best}


def flat_of(metrics: dict) -> dict[str, float]:
    """The flat numbers of any exp3rt metrics.json (pipeline, evaluate or baselines), with derived ones."""
    flat = metrics.get("flat")
    if not isinstance(flat, dict):
        flat = flat_metrics(metrics)
    flat = {k: float(v) for k, v in flat.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    for k, v in teacher_bill(metrics.get("teacher") or {}).items():
        flat.setdefault(f"teacher/{k}", v)
    extra, _ = derived(flat)
    return {**flat, **extra}


def teacher_bill(teacher: dict) -> dict[str, float]:
    """What producing the run's annotations cost: the sum of the annotation directory's
    ``<stage>.usage.json`` records, so a run that reused finished annotations (calls 0 in its own usage)
    still shows their price; the run's own usage record when that directory is not here.
    (``efficiency/teacher_*`` stays what the run itself sent.)"""
    records = []
    d = Path(str(teacher.get("directory"))) if teacher.get("directory") else None
    if d is not None and d.is_dir():
        for f in sorted(d.glob("*.usage.json")):
            try:
                records.append(json.loads(f.read_text()).get("usage") or {})
            except (json.JSONDecodeError, OSError, AttributeError):
                continue
    if not records and isinstance(teacher.get("usage"), dict):
        records = [teacher["usage"]]
    out: dict[str, float] = {}
    for rec in records:
        for k in TEACHER_KEYS:
            v = rec.get(k)
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[k] = out.get(k, 0.0) + float(v)
    return out


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except (yaml.YAMLError, OSError):
        return None


def _hydra_meta(d: Path) -> tuple[dict[str, str], list[str]]:
    """Group choices and task overrides that Hydra saved in the job's ``.hydra/``."""
    hydra_yaml = _read_yaml(d / ".hydra" / "hydra.yaml") or {}
    choices = ((hydra_yaml.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    choices = {k: v for k, v in choices.items() if not str(k).startswith("hydra/")}
    overrides = _read_yaml(d / ".hydra" / "overrides.yaml")
    if not isinstance(overrides, list):
        overrides = ((hydra_yaml.get("hydra") or {}).get("overrides") or {}).get("task") or []
    return choices, [str(o) for o in overrides]


def _last_error(d: Path) -> str | None:
    """The last error line of the job's logs: why it has no metrics.json."""
    for logfile in sorted(d.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            lines = logfile.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in reversed(lines):
            if "ERROR" in line or line.startswith(("error:", "Error", "Traceback")) or "Error:" in line:
                return re.sub(r"^\[[^\]]*\]\[[^\]]*\]\[ERROR\] - ", "", line.strip())[-300:]
    return None


def load_run(d: Path) -> Run:
    """One run directory: its metrics.json, or a failed run when there is none (or it is unreadable)."""
    d = Path(d)
    choices, overrides = _hydra_meta(d)
    run = Run(
        source=str(d),
        name=d.name,
        choices=choices,
        overrides=overrides,
        config_path=str(d / "config.yaml")
        if (d / "config.yaml").is_file()
        else str(d / ".hydra" / "config.yaml"),
    )
    path = d / "metrics.json"
    if not path.is_file():
        record = {}
        try:
            record = json.loads((d / "pipeline.json").read_text()) if (d / "pipeline.json").is_file() else {}
        except (json.JSONDecodeError, OSError):
            pass
        if record.get("dry_run"):
            run.status, run.error = "dry run", "dry_run=true: nothing was trained or evaluated"
            return run
        run.status = "failed"
        done = [
            s
            for s, r in (record.get("stages") or {}).items()
            if isinstance(r, dict) and r.get("status") != "failed"
        ]
        run.error = (_last_error(d) or "no metrics.json (the run crashed or is still running)") + (
            f" [stages done: {', '.join(done)}]" if done else ""
        )
        return run
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError) as e:
        run.status, run.error = "failed", f"unreadable metrics.json: {e}"
        return run
    run.task = metrics.get("task")
    run.choices = metrics.get("choices") or choices
    run.overrides = [str(o) for o in (metrics.get("overrides") or overrides)]
    run.name = str(metrics.get("experiment_name") or d.name)
    run.flat = flat_of(metrics)
    _, run.info = derived(run.flat)
    rr = metrics.get("rerank") or {}
    if rr:
        run.info["retriever"] = Path(str(rr.get("retriever"))).stem if rr.get("retriever") else None
        run.info["num_candidates"] = rr.get("num_candidates")
        run.info["rerank_mode"] = rr.get("mode")
    if (metrics.get("dataset") or {}).get("name"):
        run.info["dataset"] = metrics["dataset"]["name"]
    if metrics.get(
        "rating"
    ):  # which pairs its figures come from (test | valid | test file); older runs: test
        run.info["scored_on"] = (metrics.get("protocol") or {}).get("scored_split") or "test"
    return run


def run_dirs(root: Path) -> list[Path]:
    """Directories under ``root`` (itself included) that are runs: they hold metrics.json or .hydra/."""
    found = []
    for here, dirs, files in os.walk(root):
        if "metrics.json" in files or ".hydra" in dirs:
            found.append(Path(here))
            dirs[:] = []  # a run's own subfolders are not runs
            continue
        dirs[:] = [x for x in dirs if x not in _SKIP_DIRS and not x.startswith(".")]
    return sorted(found, key=_natural)


def sweep_jobs(sweep_dir: Path) -> list[list[str]] | None:
    """The jobs a finished or interrupted basic-sweeper multirun defined (each its override list), read
    from its ``multirun.yaml``; None for other sweepers (Optuna decides as it goes)."""
    cfg = _read_yaml(sweep_dir / "multirun.yaml")
    if not isinstance(cfg, dict):
        return None
    hydra = cfg.get("hydra") or {}
    sweeper = hydra.get("sweeper") or {}
    if "BasicSweeper" not in str(sweeper.get("_target_", "")):
        return None
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
        task = [str(o) for o in ((hydra.get("overrides") or {}).get("task") or [])]
        parsed = OverridesParser.create().parse_overrides(params + task)
        batches = BasicSweeper.split_arguments(parsed, None)
    except Exception as e:  # noqa: BLE001 - a sweep we cannot expand only loses the "not started" list
        log.debug("cannot expand the sweep in %s: %s", sweep_dir, e)
        return None
    return [list(job) for batch in batches for job in batch]


def _not_started(sweep_dir: Path, found: list[Path]) -> list[Run]:
    jobs = sweep_jobs(sweep_dir)
    if not jobs:
        return []
    present = {p.name for p in found if p.parent == sweep_dir}
    subdir = str(
        ((_read_yaml(sweep_dir / "multirun.yaml") or {}).get("hydra") or {})
        .get("sweep", {})
        .get("subdir", "")
    )
    if "hydra.job.num" not in subdir:  # job dirs not named by number: cannot tell which are missing
        return []
    return [
        Run(
            source=str(sweep_dir / str(i)),
            status="not started",
            name=str(i),
            overrides=job,
            error="the sweep stopped before this job started",
        )
        for i, job in enumerate(jobs)
        if str(i) not in present
    ]


def collect_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Every run under the given directories (a run dir, a multirun dir, any folder of them, or a
    metrics.json file). A directory with no run in it is reported as one failed run."""
    runs: list[Run] = []
    seen: set[str] = set()
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        if p.is_file():
            if p.name != "metrics.json":
                raise FileNotFoundError(f"{p} is not a run directory or a metrics.json file")
            p = p.parent
        found = run_dirs(p)
        batch = [load_run(d) for d in found] + _not_started(p, found)
        if not batch:
            batch = [
                Run(
                    source=str(p),
                    status="failed",
                    name=p.name,
                    error="no metrics.json and no run directories under it",
                )
            ]
        for r in batch:
            key = str(Path(r.source).resolve())
            if key not in seen:
                seen.add(key)
                runs.append(r)
    return runs


# ---------------------------------------------------------------------------------------------- W&B


def wandb_runs(
    path: str, group: str | None = None, filters: dict | None = None, api: Any = None
) -> list[Run]:
    """Runs of a W&B project (``entity/project``) through the public API; summary keys are the flat
    metric names. ``api`` is a ``wandb.Api`` (tests pass a double). Online only."""
    if api is None:
        import wandb

        api = wandb.Api(timeout=60)
    flt = dict(filters or {})
    if group:
        flt["group"] = group
    runs = []
    for r in api.runs(path, filters=flt or None):
        summary = getattr(r, "summary_metrics", None)
        if summary is None:
            summary = getattr(r, "summary", {}) or {}
        summary = dict(summary.items()) if hasattr(summary, "items") else {}
        config = {
            k: (v["value"] if isinstance(v, dict) and set(v) <= {"value", "desc"} and "value" in v else v)
            for k, v in dict(getattr(r, "config", {}) or {}).items()
            if not str(k).startswith("_")
        }
        choices = {}
        for t in getattr(r, "tags", None) or []:
            k, sep, v = str(t).partition(":")
            if sep:
                choices[k] = v
        flat = {
            k: float(v)
            for k, v in summary.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and not str(k).startswith("_")
        }
        extra, info = derived(flat)
        state = str(getattr(r, "state", "finished") or "finished")
        rp = getattr(r, "path", None)
        source = "/".join(rp) if isinstance(rp, list | tuple) else f"{path}/{getattr(r, 'id', '?')}"
        run = Run(
            source=source,
            status="ok" if state == "finished" else state,
            task=config.get("task_name"),
            name=str(getattr(r, "name", None) or getattr(r, "id", "?")),
            choices=choices,
            flat={**flat, **extra},
            info=info,
            config=flatten(config),
        )
        if any(k.startswith("rating/") for k in flat):
            run.info["scored_on"] = (
                str((config.get("eval") or {}).get("split") or "test")
                if isinstance(config.get("eval"), dict)
                else "test"
            )
        if state != "finished":
            run.error = f"W&B state {state}"
        if getattr(r, "url", None):
            run.info["url"] = r.url
        runs.append(run)
    return runs


# -------------------------------------------------------------------------------------------- labels


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Settings whose value is not the same in every run. A key a run's overrides lack counts as a value
    of its own (the default); a run that knows no group choices (a job that never started, a W&B run
    without tags) does not make every group look different."""
    settings = [r.settings() for r in runs]
    override_keys = [{split_override(o)[0] for o in r.overrides} for r in runs]
    keys: list[str] = []
    for s in settings:
        keys += [k for k in s if k not in keys]
    out = []
    for k in keys:
        values = {
            s.get(k) for r, s, ov in zip(runs, settings, override_keys, strict=True) if k in ov or r.choices
        }
        if len(values) > 1:
            out.append(k)
    return out


def label_runs(runs: Sequence[Run], by: Sequence[str] | None = None) -> list[str]:
    """Give each run a label from what differs (or from the ``by`` keys); labels are made unique."""
    keys = list(by) if by else differing_keys(runs)
    for r in runs:
        if by:
            r.label = ", ".join(f"{k}={r.lookup(k) if r.lookup(k) is not None else '–'}" for k in keys)
        elif keys:
            s = r.settings()
            r.label = ", ".join(f"{k}={s[k]}" for k in keys if k in s) or "(defaults)"
        else:
            r.label = r.name
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.label] = counts.get(r.label, 0) + 1
    for r in runs:
        if counts[r.label] > 1:  # the same settings twice: tell them apart by where they are
            r.label = f"{r.label} [{Path(r.source).name}]"
    return keys


# ------------------------------------------------------------------------------------------- metrics


def available_metrics(runs: Sequence[Run]) -> list[str]:
    out: dict[str, None] = {}
    for r in runs:
        out.update(dict.fromkeys(r.flat))
    return list(out)


def select_metrics(runs: Sequence[Run], wanted: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """The table's columns and warnings. Without ``wanted``: the defaults that some run has (else every
    model's RMSE and retrievers' nDCG@10). ``wanted`` may hold glob patterns (``rerank/after/*@10``); a
    name no run has stays as a column of "–" and is warned about, with the closest names."""
    have = available_metrics(runs)
    warnings: list[str] = []
    if not wanted:
        cols = [m for m in DEFAULT_METRICS if m in have]
        if not cols:
            cols = [m for pat in FALLBACK_PATTERNS for m in have if fnmatch.fnmatchcase(m, pat)]
        return cols, warnings
    cols = []
    for w in wanted:
        w = w.strip()
        if not w:
            continue
        if any(c in w for c in "*?["):
            hits = [m for m in have if fnmatch.fnmatchcase(m, w)]
            if not hits:
                warnings.append(f"no metric matches {w!r}")
            cols += [m for m in hits if m not in cols]
        elif w not in cols:
            cols.append(w)
            if w not in have and have:
                near = difflib.get_close_matches(w, have, n=3, cutoff=0.6)
                warnings.append(
                    f"no run has metric {w!r}" + (f" (did you mean {', '.join(near)}?)" if near else "")
                )
    return cols, warnings


_COUNT = re.compile(
    r"^(n|n_\w+|\w*calls|\w*tokens|users\w*|failures|scored|failed|cached|num_candidates|"
    r"candidates_unscored|global_step|\w*_steps?)$"
)


def cell(metric: str, value: float | None) -> float | int | None:
    """A table cell: counts (pairs, users, calls, tokens, candidates) as integers, the rest as they are."""
    if value is not None and float(value).is_integer() and _COUNT.match(metric.rsplit("/", 1)[-1]):
        return int(value)
    return value


def short_name(metric: str) -> str:
    """Column header: the flat name without the ``rating/`` prefix."""
    return metric[len("rating/") :] if metric.startswith("rating/") else metric


@dataclass
class Comparison:
    """Runs × metrics, with the runs that failed and where the numbers came from."""

    runs: list[Run]
    metrics: list[str]
    title: str = "exp3rt-compare"
    sources: list[str] = field(default_factory=list)
    label_keys: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    lead: list[str] = field(default_factory=list)  # markdown before the runs table (a recipe's paper table)
    sections: list[str] = field(default_factory=list)  # markdown after it

    @property
    def failed(self) -> list[Run]:
        return [r for r in self.runs if not r.ok]

    @property
    def scored_on(self) -> bool:
        """Whether the table says which pairs each run's figures come from (any run evaluated a student)."""
        return any(r.info.get("scored_on") for r in self.runs)

    def header(self) -> list[str]:
        status = ["status"] if self.failed else []
        best = ["best baseline"] if "rating/best_baseline/rmse" in self.metrics else []
        scored = ["scored on"] if self.scored_on else []
        return ["run", *status, *scored, *[short_name(m) for m in self.metrics], *best]

    def rows(self) -> list[list]:
        out = []
        for r in self.runs:
            row: list = [r.label]
            if self.failed:
                row.append(r.status)
            if self.scored_on:
                row.append(r.info.get("scored_on"))
            row += [cell(m, r.value(m)) for m in self.metrics]
            if "rating/best_baseline/rmse" in self.metrics:
                row.append(r.info.get("best_baseline"))
            out.append(row)
        return out

    def table(self) -> str:
        return markdown_table(self.header(), self.rows())

    def summary_line(self) -> str:
        n, bad = len(self.runs), len(self.failed)
        return f"{n} run{'s' if n != 1 else ''}: {n - bad} finished, {bad} failed or not started"

    def failures(self) -> str:
        if not self.failed:
            return ""
        lines = [f"Failed or not started: {len(self.failed)} of {len(self.runs)} runs"]
        for r in self.failed:
            lines.append(
                f"- {r.status}: {r.source}"
                + (f" ({r.label})" if r.label else "")
                + (f" — {r.error}" if r.error else "")
            )
        return "\n".join(lines)

    def markdown(self) -> str:
        parts = [f"# {self.title}", ""]
        if self.sources:
            parts += ["Runs from " + ", ".join(f"`{s}`" for s in self.sources) + ".", ""]
        parts += [x.rstrip() + "\n" for x in self.lead]
        parts += [
            self.summary_line() + (f"; labelled by {', '.join(self.label_keys)}" if self.label_keys else ""),
            "",
            self.table(),
            "",
        ]
        if self.failures():
            parts += [self.failures(), ""]
        if self.warnings:
            parts += ["Notes:", *[f"- {w}" for w in self.warnings], ""]
        parts += [s.rstrip() + "\n" for s in self.sections]
        return "\n".join(parts).rstrip() + "\n"

    def to_json(self) -> dict:
        return {
            "title": self.title,
            "sources": self.sources,
            "metrics": self.metrics,
            "label_keys": self.label_keys,
            "total": len(self.runs),
            "finished": len(self.runs) - len(self.failed),
            "failed": len(self.failed),
            "warnings": self.warnings,
            "runs": [
                {
                    "label": r.label,
                    "source": r.source,
                    "status": r.status,
                    "task": r.task,
                    "error": r.error,
                    "choices": r.choices,
                    "overrides": r.overrides,
                    "info": r.info,
                    "values": {m: r.value(m) for m in self.metrics},
                }
                for r in self.runs
            ],
        }


def compare(
    runs: list[Run],
    metrics: Sequence[str] | None = None,
    by: Sequence[str] | None = None,
    title: str | None = None,
    sources: Sequence[str] | None = None,
) -> Comparison:
    keys = label_runs(runs, by)
    ok = [r for r in runs if r.ok]
    cols, warnings = select_metrics(ok, metrics)
    kinds = sorted({str(r.info["scored_on"]) for r in ok if r.info.get("scored_on")})
    if len(kinds) > 1:
        warnings.append(
            f"these runs were scored on different pairs ({', '.join(kinds)}): compare like with like; "
            "validation figures are what a search optimised, not figures to report"
        )
    return Comparison(
        runs=runs,
        metrics=cols,
        title=title or "exp3rt-compare",
        sources=[str(s) for s in sources or []],
        label_keys=keys,
        warnings=warnings,
    )


def entity_table(
    runs: Sequence[Run],
    section: str,
    keys: Sequence[str],
    entities: Sequence[str] | None = None,
    names: dict[str, str] | None = None,
) -> tuple[list[str], list[list]]:
    """Rows are the entities of a section — the models of ``rating/<model>/<key>`` or the ``before``/
    ``after`` of ``rerank/<stage>/<metric>`` — of each finished run (the run's label first when there
    are several); columns are ``keys``. Missing values stay None (printed "–")."""
    ok = [r for r in runs if r.ok]
    names = names or {}
    header = (["run"] if len(ok) > 1 else []) + [
        {"rating": "model", "rerank": "stage"}.get(section, section),
        *keys,
    ]
    rows = []
    for r in ok:
        found = entities or list(
            dict.fromkeys(
                k.split("/")[1] for k in r.flat if k.startswith(f"{section}/") and k.count("/") == 2
            )
        )
        for e in found:
            if e == "best_baseline":
                continue
            row = [r.label] if len(ok) > 1 else []
            row += [names.get(e, e), *[cell(k, r.value(f"{section}/{e}/{k}")) for k in keys]]
            rows.append(row)
    return header, rows


# ------------------------------------------------------------------------------------------- outputs


def write_outputs(
    cmp: Comparison,
    out_dir: Path,
    plot: Path | None = None,
    stem: str = "compare",
    bars: tuple | None = None,
    extra: dict | None = None,
) -> dict[str, Path]:
    """``<stem>.md``, ``<stem>.json`` and a bar plot (``<stem>.png`` unless ``plot`` names another file):
    runs × metrics, or the ``bars`` a recipe gives as (labels, metric names, values)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out_dir / f"{stem}.md",
        "json": out_dir / f"{stem}.json",
        "plot": plot or out_dir / f"{stem}.png",
    }
    # reports nothing reuses as a finished stage: renamed into place, no .sha record beside them
    write_text_atomic(paths["markdown"], cmp.markdown(), record=False)
    write_json_atomic(paths["json"], {**cmp.to_json(), **(extra or {})}, record=False)
    ok = [r for r in cmp.runs if r.ok]
    if bars is None:
        bars = (
            [r.label for r in ok],
            [short_name(m) for m in cmp.metrics],
            [[r.value(m) for m in cmp.metrics] for r in ok],
        )
    paths["plot"].parent.mkdir(parents=True, exist_ok=True)
    metric_bars(*bars, paths["plot"], cmp.title)
    return paths


def default_out_dir(paths: Sequence[str | Path]) -> Path:
    """The multirun dir when one was given (it has multirun.yaml, or holds several runs), else the cwd."""
    if len(paths) == 1:
        p = Path(paths[0])
        several = not (p / "metrics.json").is_file() and len(run_dirs(p)) > 1
        if p.is_dir() and ((p / "multirun.yaml").is_file() or several):
            return p
    return Path.cwd()
