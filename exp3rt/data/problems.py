"""Bad-input handling shared by every loader.

A loader reports each problem it finds with :meth:`InputProblems.bad`, naming the file, the line (or
record index) and the field. In strict mode (the default) the first problem raises
:class:`DataError` with that location; in lenient mode the record is skipped and counted, and the
counts plus the first examples of each kind go into the data report written beside the data. Quirks
that are fixed rather than skipped (a thousands separator in a vote count, a duplicate metadata row)
are counted with :meth:`InputProblems.note` so the report shows them too. Nothing is dropped silently.

A ``kind`` is the reason a report row counts, so it must be stable: it names the field and what is
wrong, never the record number or the offending value (those go into ``reason`` and the examples).
The data report has one row per kind: its count and the first record numbers (lines) where it occurred.

Each loader also accounts for every unit it read from an input file (:meth:`InputProblems.account`:
lines for text files, records for JSON lists, rows for Parquet): kept + skipped + ignored (a header, blank
lines, variant copies) = read, shown per file in the report. :class:`NoUsableData` uses that account to say
why a dataset came out empty.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from exp3rt.artifacts import write_json_atomic, write_text_atomic

MAX_EXAMPLES_PER_KIND = 20
REPORT_LINES_PER_KIND = 5  # record numbers shown per reason in data_report.md (the JSON keeps up to 20)


class DataError(ValueError):
    """A bad input record: the message names file, line and field."""

    def __init__(
        self,
        file: str | Path,
        line: int | None,
        field: str | None,
        reason: str,
        strict_key: str = "dataset.strict",
    ):
        self.file, self.line, self.field, self.reason = str(file), line, field, reason
        where = f"{file}" + (f", line {line}" if line is not None else "")
        what = f", field '{field}'" if field else ""
        super().__init__(
            f"{where}{what}: {reason} (set {strict_key}=false to skip such records and count them in "
            "the data report)"
        )


class NoUsableData(DataError):
    """A dataset with no usable interactions: one sentence naming each input file, how much of it was
    read and why it was skipped (``fail_cleanly`` prints it like any other :class:`DataError`)."""

    def __init__(self, message: str, file: str | Path | None = None):
        self.file, self.line, self.field, self.reason = str(file or ""), None, None, message
        ValueError.__init__(self, message)


@dataclass
class InputProblems:
    """Collects skips (lenient mode) or raises on the first one (strict mode)."""

    strict: bool = True
    strict_key: str = "dataset.strict"  # the config key that turns strict off, named in the error
    skipped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=lambda: defaultdict(list))
    note_examples: dict = field(default_factory=lambda: defaultdict(list))
    inputs: dict = field(default_factory=dict)  # file -> {"unit", "read", "kept", "ignored": {why: n}}
    skipped_by_file: dict = field(default_factory=lambda: defaultdict(Counter))  # file -> kind -> records
    skipped_units: Counter = field(default_factory=Counter)  # file -> lines (records, rows) skipped

    def bad(
        self, file, line: int | None, field: str | None, reason: str, kind: str | None = None, lines: int = 1
    ) -> None:
        """A record that cannot be used: raise (strict) or count a skip (lenient). ``lines``: how many
        physical lines the record spans (a quoted CSV field can hold line breaks)."""
        if self.strict:
            raise DataError(file, line, field, reason, self.strict_key)
        kind = kind or (f"{field}: {reason}" if field else reason)
        self.skipped[kind] += 1
        self.skipped_by_file[str(file)][kind] += 1
        self.skipped_units[str(file)] += lines
        if len(self.examples[kind]) < MAX_EXAMPLES_PER_KIND:
            self.examples[kind].append({"file": str(file), "line": line, "field": field, "reason": reason})

    def note(self, kind: str, count: int = 1, file=None, line: int | None = None) -> None:
        """A quirk that was repaired or resolved by a configured policy (not a skip); ``file`` / ``line``
        (when given) say where, for the report's first examples."""
        if count:
            self.notes[kind] += count
            if file is not None and len(self.note_examples[kind]) < MAX_EXAMPLES_PER_KIND:
                self.note_examples[kind].append({"file": str(file), "line": line})

    def account(self, file, read: int, kept: int, unit: str = "lines", **ignored: int) -> None:
        """What a loader did with each unit (``lines``, ``records``, ``rows``) of one input file: ``kept``
        plus the skips :meth:`bad` counted for the file plus ``ignored`` (by why) make ``read``."""
        self.inputs[str(file)] = {
            "unit": unit,
            "read": int(read),
            "kept": int(kept),
            "ignored": {why.replace("_", " "): int(n) for why, n in ignored.items() if n},
        }

    def input_summary(self, file) -> str:
        """``61 lines read, 4 kept, 57 skipped (score: not a number 40, ...), 0 ignored`` for one file."""
        file = str(file)
        acc = self.inputs.get(file, {"unit": "lines", "read": None, "kept": 0, "ignored": {}})
        unit = acc["unit"]
        parts = []
        if acc["read"] is not None:
            parts.append(f"{acc['read']} {unit[:-1] if acc['read'] == 1 else unit} read")
        parts.append(f"{acc['kept']} kept")
        kinds = self.skipped_by_file.get(file, Counter())
        skipped = f"{self.skipped_units.get(file, 0)} skipped"
        if kinds:
            skipped += " (" + ", ".join(f"{k} {n}" for k, n in kinds.most_common()) + ")"
        parts.append(skipped)
        if acc["ignored"]:
            parts.append(
                f"{sum(acc['ignored'].values())} ignored ("
                + ", ".join(f"{k} {n}" for k, n in acc["ignored"].items())
                + ")"
            )
        return ", ".join(parts)

    def input_table(self) -> dict:
        """Per input file: unit, read, kept, skipped (units), skipped by reason (records), ignored."""
        out = {}
        for file, acc in self.inputs.items():
            out[file] = {
                **acc,
                "skipped": int(self.skipped_units.get(file, 0)),
                "skipped_by_reason": dict(self.skipped_by_file.get(file, {})),
            }
        return out

    @property
    def total_skipped(self) -> int:
        return int(sum(self.skipped.values()))

    def to_dict(self) -> dict:
        return {
            "strict": self.strict,
            "skipped_total": self.total_skipped,
            "skipped": dict(self.skipped),
            "notes": dict(self.notes),
            "examples": {k: v for k, v in self.examples.items()},
            "note_examples": {k: v for k, v in self.note_examples.items()},
            "inputs": self.input_table(),
        }

    def write(self, directory: Path, summary: dict | None = None) -> Path:
        """Write ``data_report.json`` and a human-readable ``data_report.md`` into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"summary": summary or {}, **self.to_dict()}
        write_json_atomic(directory / "data_report.json", payload)
        lines = ["# Data report", ""]
        if summary:
            if summary.get("synthetic"):
                lines += ["**This dataset is synthetic** (generated by exp3rt's synthetic world).", ""]
            lines += (
                ["| field | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in summary.items()] + [""]
            )
        lines += [
            f"Mode: {'strict' if self.strict else 'lenient'}. Records skipped: {self.total_skipped}.",
            "",
        ]
        if self.inputs:
            lines += [
                "## Input files",
                "",
                "Every unit read is kept, skipped or ignored.",
                "",
                "| file | read | kept | skipped | ignored |",
                "|---|---|---|---|---|",
            ]
            for file, acc in self.input_table().items():
                ignored = ", ".join(f"{k} {n}" for k, n in acc["ignored"].items()) or "0"
                lines.append(
                    f"| {_cell(Path(file).name)} | {acc['read']} {acc['unit']} | {acc['kept']} | "
                    f"{acc['skipped']} | {_cell(ignored)} |"
                )
            lines.append("")
        if self.skipped:
            lines += ["## Skipped records", "", "| reason | count | first records | first example |"]
            lines.append("|---|---|---|---|")
            for kind, count in self.skipped.most_common():
                exs = self.examples.get(kind, [])
                first = _cell(exs[0]["reason"]) if exs else ""
                lines.append(f"| {_cell(kind)} | {count} | {_where(exs, count)} | {first} |")
            lines.append("")
        if self.notes:
            lines += [
                "## Repaired or resolved by policy",
                "",
                "| what | count | first records |",
                "|---|---|---|",
            ]
            for kind, count in self.notes.most_common():
                where = _where(self.note_examples.get(kind, []), count)
                lines.append(f"| {_cell(kind)} | {count} | {where} |")
            lines.append("")
        write_text_atomic(directory / "data_report.md", "\n".join(lines))
        return directory / "data_report.json"


def _cell(text: str, limit: int = 160) -> str:
    """Text for one markdown table cell: one line, pipes escaped, long text cut."""
    text = " ".join(str(text).split()).replace("|", "\\|").replace("*", "\\*")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _where(examples: list[dict], count: int) -> str:
    """``file.json: 72, 80, 95, …`` — the first record numbers (lines) per file; "…" when there are more."""
    shown = examples[:REPORT_LINES_PER_KIND]
    by_file: dict[str, list[str]] = {}
    for ex in shown:
        by_file.setdefault(Path(ex["file"]).name, []).append(
            "-" if ex.get("line") is None else str(ex["line"])
        )
    text = "; ".join(f"{name}: {', '.join(lines)}" for name, lines in by_file.items())
    more = ", …" if count > len(shown) and shown else ""
    return _cell(text + more, limit=200)
