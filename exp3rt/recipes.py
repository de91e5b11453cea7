"""What the experiments/ scripts share: launch one Hydra multirun of ``exp3rt-pipeline``, then aggregate
its jobs' metrics.json (through :mod:`exp3rt.compare`) into the paper table's markdown, JSON and PNG.

    python experiments/<recipe>.py                         # the CPU demo settings (runs on a laptop)
    python experiments/<recipe>.py --preset quick          # a smoke test: tiny world, a few steps
    python experiments/<recipe>.py --preset paper experiment=paper_imdb hydra/launcher=slurm_gpu
    python experiments/<recipe>.py --aggregate multirun/experiments/<recipe>/<time>   # tables only
    python experiments/<recipe>.py --dry-run ...           # print the command, run nothing

Overrides after the options are appended to the preset's and the recipe's (a later value of the same
key replaces an earlier one, so ``ablation=full,no_reasoning`` shortens the ablation grid). Each recipe's
sweep lands in ``$EXP3RT_MULTIRUN/experiments/<recipe>/<time>/`` (default ``multirun/``); its tables in
``experiments/results/<recipe>/``. ``EXP3RT_PRESET`` sets the default preset.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from exp3rt.compare import (
    Comparison,
    Run,
    cell,
    collect_runs,
    compare,
    entity_table,
    split_override,
    write_outputs,
)
from exp3rt.evaluation.report import markdown_table

REPO = Path(__file__).resolve().parents[1]

# Settings added before the recipe's own sweep. `paper` adds nothing: name a preset on the command line.
PRESETS: dict[str, list[str]] = {
    # the demo preset (experiment=demo: synthetic world, extractive teacher, tiny student), shortened so a
    # recipe of several runs finishes in minutes on two CPU cores
    "demo": ["trainer.max_steps=300", "eval.max_pairs=100", "eval.rerank_max_users=20", "progress=false"],
    # a smoke test: the debug world (60 users, 50 items) and a few training steps (~15 s a run)
    "quick": [
        "debug=default",
        "trainer.max_steps=20",
        "eval.max_pairs=10",
        "eval.rerank_max_users=3",
        "progress=false",
        "hydra.job_logging.root.level=INFO",
    ],
    "paper": [],
}


def merge_overrides(*groups: Sequence[str]) -> list[str]:
    """Concatenate override lists; a later override of the same key replaces the earlier one in place."""
    out: dict[str, str] = {}
    for group in groups:
        for o in group:
            key, _ = split_override(o)
            out.pop(key, None)
            out[key] = o
    return list(out.values())


@dataclass
class Table:
    """A recipe's own view of its runs: markdown sections, and the bars of its PNG."""

    sections: list[str] = field(default_factory=list)
    bars: tuple[list[str], list[str], list[list[float | None]]] | None = None  # labels, metrics, values
    data: dict = field(default_factory=dict)  # extra numbers for <recipe>.json (e.g. a ratio)


@dataclass
class Recipe:
    name: str
    title: str
    # the recipe's sweep; a function gets the preset and the user's overrides and returns the sweep plus
    # notes for what it left out (a teacher without its key or model folder)
    sweep: Sequence[str] | Callable[[str, Sequence[str]], tuple[list[str], list[str]]] = ()
    preset_overrides: dict[str, list[str]] = field(default_factory=dict)  # per preset, after PRESETS
    metrics: Sequence[str] | None = None  # the runs table's columns (None: exp3rt-compare's defaults)
    by: Sequence[str] | None = None
    view: Callable[[Comparison], Table] | None = None
    results_root: Path = REPO / "experiments" / "results"

    # ---------------------------------------------------------------------------------- launching
    def command(self, preset: str, extra: Sequence[str], sweep_dir: Path) -> tuple[list[str], list[str]]:
        if preset not in PRESETS:
            raise SystemExit(f"error: unknown preset {preset!r}; allowed: {sorted(PRESETS)}")
        if callable(self.sweep):
            sweep, notes = self.sweep(preset, extra)
        else:
            sweep, notes = list(self.sweep), []
        overrides = merge_overrides(
            PRESETS[preset],
            self.preset_overrides.get(preset, []),
            sweep,
            extra,
            [f"hydra.sweep.dir={sweep_dir}"],
        )
        return [sys.executable, "-m", "exp3rt", "-m", *overrides], notes

    def sweep_dir(self) -> Path:
        root = Path(os.environ.get("EXP3RT_MULTIRUN") or REPO / "multirun")
        return root / "experiments" / self.name / time.strftime("%Y-%m-%d_%H-%M-%S")

    # -------------------------------------------------------------------------------- aggregating
    def aggregate(
        self,
        sweep_dirs: Sequence[Path],
        out_dir: Path | None = None,
        notes: Sequence[str] = (),
        command: str | None = None,
    ) -> tuple[Comparison, dict[str, Path]]:
        """The recipe's table from finished (or partly failed) multirun dirs: ``<out>/<recipe>.md``,
        ``.json`` and ``.png``."""
        out_dir = Path(out_dir or self.results_root / self.name)
        runs: list[Run] = collect_runs(sweep_dirs)
        cmp = compare(
            runs, metrics=self.metrics, by=self.by, title=self.title, sources=[str(d) for d in sweep_dirs]
        )
        table = self.view(cmp) if self.view else Table()
        cmp.lead = list(table.sections)
        kinds = sorted({str(r.info["scored_on"]) for r in runs if r.ok and r.info.get("scored_on")})
        if kinds:  # which pairs the figures come from (metrics.json protocol.scored_split)
            cmp.lead.insert(
                0,
                f"Scored on: {', '.join(kinds)} pairs"
                + (
                    " (VALIDATION pairs are what a search optimised, not figures to report)."
                    if "valid" in kinds
                    else "."
                ),
            )
        cmp.warnings = [*notes, *cmp.warnings]
        if command:
            cmp.sections.append(f"Command:\n\n```\n{command}\n```")
        paths = write_outputs(cmp, out_dir, stem=self.name, bars=table.bars, extra=table.data)
        return cmp, paths

    # ------------------------------------------------------------------------------------- the CLI
    def main(self, argv: Sequence[str] | None = None) -> int:
        p = argparse.ArgumentParser(
            prog=f"experiments/{self.name}.py",
            description=self.title,
            epilog="Trailing KEY=VALUE arguments are exp3rt-pipeline (Hydra) overrides.",
        )
        p.add_argument(
            "--preset",
            default=os.environ.get("EXP3RT_PRESET", "demo"),
            choices=sorted(PRESETS),
            help="demo (default): CPU demo settings; quick: a smoke test; paper: nothing added",
        )
        p.add_argument(
            "--aggregate",
            nargs="+",
            type=Path,
            metavar="SWEEP_DIR",
            help="do not launch: build the table from these finished multirun dirs",
        )
        p.add_argument("--out", type=Path, help=f"results folder (default experiments/results/{self.name})")
        p.add_argument("--dry-run", action="store_true", help="print the multirun command and exit")
        p.add_argument(
            "overrides",
            nargs="*",
            help="Hydra overrides, e.g. experiment=paper_imdb hydra/launcher=slurm_gpu",
        )
        args = p.parse_args(argv)
        if args.aggregate:
            try:
                cmp, paths = self.aggregate(args.aggregate, args.out)
            except FileNotFoundError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            return self._report(cmp, paths)
        given = [split_override(o)[1] for o in args.overrides if split_override(o)[0] == "hydra.sweep.dir"]
        sweep_dir = Path(given[-1]) if given else self.sweep_dir()
        cmd, notes = self.command(args.preset, args.overrides, sweep_dir)
        shown = shlex.join(["exp3rt-pipeline", *cmd[3:]])
        for n in notes:
            print(f"note: {n}")
        if args.dry_run:
            print(shown)
            return 0
        print(f"$ {shown}", flush=True)
        started = time.perf_counter()
        rc = subprocess.run(cmd).returncode
        print(f"multirun finished in {time.perf_counter() - started:.0f} s (exit status {rc})")
        if not sweep_dir.is_dir():
            print(f"error: the multirun wrote nothing to {sweep_dir}", file=sys.stderr)
            return rc or 2
        cmp, paths = self.aggregate([sweep_dir], args.out, notes=notes, command=shown)
        return self._report(cmp, paths) or rc

    @staticmethod
    def _report(cmp: Comparison, paths: dict[str, Path]) -> int:
        print(cmp.markdown())
        print(f"wrote {paths['markdown']}, {paths['json']}, {paths['plot']}")
        return 1 if cmp.failed else 0


def entity_view(
    cmp: Comparison,
    section: str,
    keys: Sequence[str],
    heading: str,
    plot_keys: Sequence[str] | None = None,
    entities: Sequence[str] | None = None,
    names: dict[str, str] | None = None,
) -> Table:
    """A paper table whose rows are a section's entities (rating models; first stage / reranked) of each
    run, and bars of ``plot_keys`` per row."""
    header, rows = entity_table(cmp.runs, section, keys, entities=entities, names=names)
    n_label = len(header) - len(keys)
    plot_keys = list(plot_keys or keys)
    labels = [" ".join(str(c) for c in row[:n_label]) for row in rows]
    values = [[row[n_label + list(keys).index(k)] for k in plot_keys] for row in rows]
    text = f"## {heading}\n\n" + (markdown_table(header, rows) if rows else "(no finished run)")
    return Table(
        sections=[text], bars=(labels, plot_keys, values), data={"table": {"header": header, "rows": rows}}
    )


def runs_view(
    cmp: Comparison, heading: str, columns: Sequence[tuple[str, str]], extra_lines: Sequence[str] = ()
) -> Table:
    """A paper table with one row per run: ``columns`` are (header, flat metric name) pairs."""
    header = ["run", *[h for h, _ in columns]]
    ok = [r for r in cmp.runs if r.ok]
    rows = [[r.label, *[cell(m, r.value(m)) for _, m in columns]] for r in ok]
    text = f"## {heading}\n\n" + (markdown_table(header, rows) if rows else "(no finished run)")
    if extra_lines:
        text += "\n\n" + "\n".join(extra_lines)
    return Table(
        sections=[text],
        bars=([r.label for r in ok], [h for h, _ in columns], [row[1:] for row in rows]),
        data={"table": {"header": header, "rows": rows}},
    )
