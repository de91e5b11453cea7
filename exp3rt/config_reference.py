"""The key-by-key configuration reference (``docs/config_reference.md``), generated from the schemas.

Types and defaults come from the dataclasses in :mod:`exp3rt.config` (``SCHEMAS``); descriptions come
from the comments in that module's source: a field's trailing comment (any comment on the lines of its
statement), else the comment lines right above it; a dataclass's docstring introduces its table. The
presets of a group are the YAML files in ``conf/<group>/``.

    python -m exp3rt.config_reference            # write docs/config_reference.md
    python -m exp3rt.config_reference --check    # exit 1 when the committed file is stale (CI, make lint)
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import io
import json
import re
import sys
import tokenize
import types
import typing
from dataclasses import MISSING as DC_MISSING
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING

from exp3rt import CONF_DIR, config

ROOT = CONF_DIR.parent
DEFAULT_OUT = Path("docs") / "config_reference.md"
COMMAND = "python -m exp3rt.config_reference"
_PRAGMAS = ("type:", "noqa", "pragma:", "fmt:")


@dataclasses.dataclass
class ClassDoc:
    """What the source says about one class: its docstring and a description per field / member."""

    doc: str = ""
    fields: dict[str, str] = dataclasses.field(default_factory=dict)


def _comment_text(raw: str) -> str:
    text = raw.lstrip("#").lstrip(":").strip()
    return "" if text.startswith(_PRAGMAS) else text


def parse_comments(source: str) -> dict[str, ClassDoc]:
    """Docstring and per-field comments of every top-level class in ``source``."""
    comments: dict[int, str] = {}  # line -> comment text (pragmas dropped)
    comment_only: set[int] = set()  # lines holding nothing but a comment
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            line = tok.start[0]
            comments[line] = _comment_text(tok.string)
            if not tok.line[: tok.start[1]].strip():
                comment_only.add(line)

    def describe(node: ast.stmt) -> str:
        trailing = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if comments.get(n)]
        if trailing:
            return " ".join(trailing)
        above = []
        line = node.lineno - 1
        while line in comment_only:
            if comments[line]:
                above.append(comments[line])
            line -= 1
        return " ".join(reversed(above))

    out: dict[str, ClassDoc] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        cdoc = ClassDoc(doc=_rst_to_markdown(ast.get_docstring(node) or ""))
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                cdoc.fields[stmt.target.id] = describe(stmt)
            elif isinstance(stmt, ast.Assign):
                for target in stmt.targets:
                    if isinstance(target, ast.Name):
                        cdoc.fields[target.id] = describe(stmt)
        out[node.name] = cdoc
    return out


def render_type(tp: Any) -> str:
    """A type as a reader writes it: ``int``, ``float | null``, ``one of a, b``, ``list[str]``."""
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        parts = [render_type(a) for a in args if a is not type(None)]
        return " | ".join(parts + (["null"] if type(None) in args else []))
    if origin is not None:
        args = ", ".join(render_type(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in tp)
    if dataclasses.is_dataclass(tp):
        return "section"
    return getattr(tp, "__name__", str(tp))


def render_default(f: dataclasses.Field) -> str:
    """The default as YAML shows it; a required key (``???``) reads ``required``."""
    if f.default_factory is not DC_MISSING:
        value = f.default_factory()
    elif f.default is not DC_MISSING:
        value = f.default
    else:
        return "required"
    if value == MISSING:
        return "required"
    if isinstance(value, str) and "${" in value:
        return value  # an interpolation, verbatim
    if isinstance(value, str) and not value.isprintable():
        return json.dumps(value, ensure_ascii=False)  # YAML's double-quoted scalar, e.g. "\n---\n"
    value = _plain(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True, sort_keys=False)
    return text.strip().removesuffix("...").strip()


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _rst_to_markdown(text: str) -> str:
    """Docstrings are reST: ``code`` and :func:`name` become markdown code spans."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    text = text.replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def presets(group: str) -> list[str]:
    """The preset names of ``conf/<group>/`` (the schema node Hydra stores is not a file)."""
    folder = CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml") if p.stem != "schema")


def _sections(
    key: str, cls: type, intro: list[str], docs: dict[str, ClassDoc]
) -> list[tuple[str, list[str], list[tuple[str, str, str, str]], list[str]]]:
    """(heading key, intro paragraphs, rows, enum notes) for ``cls`` and each nested dataclass below it."""
    cdoc = docs.get(cls.__name__, ClassDoc())
    hints = typing.get_type_hints(cls)
    rows: list[tuple[str, str, str, str]] = []
    notes: list[str] = []
    nested = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        desc = cdoc.fields.get(f.name, "")
        dotted = f"{key}.{f.name}"
        if dataclasses.is_dataclass(tp):
            nested.append((dotted, tp, [desc] if desc else []))
            continue
        if typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
            value_cls = typing.get_args(tp)[1]
            rows.append((dotted, f"dict[str, {dotted}.<name>]", render_default(f), desc))
            nested.append((f"{dotted}.<name>", value_cls, [desc] if desc else []))
            continue
        rows.append((dotted, render_type(tp), render_default(f), desc))
        enums = [a for a in (tp, *typing.get_args(tp)) if isinstance(a, type) and issubclass(a, enum.Enum)]
        for en in enums:
            edoc = docs.get(en.__name__, ClassDoc())
            said = [(m.value, edoc.fields.get(m.name, "")) for m in en]
            if edoc.doc or any(text for _, text in said):
                lines = [f"`{dotted}`" + (f": {' '.join(edoc.doc.split())}" if edoc.doc else "")]
                lines += [f"  - `{value}`" + (f": {text}" if text else "") for value, text in said]
                notes.append("- " + "\n".join(lines))
    out = [(key, intro + ([cdoc.doc] if cdoc.doc else []), rows, notes)]
    for dotted, sub, sub_intro in nested:
        out += _sections(dotted, sub, sub_intro, docs)
    return out


def reference_markdown() -> str:
    """The whole reference page, deterministic for a given source tree."""
    docs = parse_comments(Path(config.__file__).read_text(encoding="utf-8"))
    lines = [
        f"<!-- generated by `{COMMAND}` from exp3rt/config.py: edit the schemas, not this file -->",
        "# Configuration reference",
        "",
        "Every key of every config group, generated from the typed schemas in",
        "[`exp3rt/config.py`](../exp3rt/config.py) (types, defaults, and the comments there as",
        f"descriptions); `{COMMAND} --check` fails when this page is stale. How the groups are",
        "composed and overridden: [configuration.md](configuration.md).",
        "",
        "A default of `required` must come from a preset or the command line; `null` is YAML's None;",
        "`${...}` is an interpolation resolved when the config is composed. Presets are the files in",
        "`conf/<group>/`, picked with `<group>=<preset>`.",
        "",
        "Groups: " + ", ".join(f"`{g}`" for g in config.SCHEMAS) + ".",
    ]
    for group, schema in config.SCHEMAS.items():
        names = presets(group)
        lines += ["", f"## {group}", ""]
        lines.append("Presets: " + (", ".join(f"`{n}`" for n in names) if names else "none") + ".")
        for n, (key, intro, rows, notes) in enumerate(_sections(group, schema, [], docs)):
            if n:
                lines += ["", f"### {key}"]
            for paragraph in intro:
                lines += ["", paragraph]
            if rows:
                lines += ["", "| key | type | default | description |", "|---|---|---|---|"]
                lines += [f"| `{k}` | {_code(t)} | {_code(d)} | {_cell(desc)} |" for k, t, d, desc in rows]
            if notes:
                lines += ["", "Allowed values:", "", *notes]
    return "\n".join(lines) + "\n"


def documented_keys() -> list[str]:
    """Every leaf key the reference documents, dotted (``<name>`` stands for a dict key)."""
    docs = parse_comments(Path(config.__file__).read_text(encoding="utf-8"))
    return [row[0] for g, s in config.SCHEMAS.items() for sec in _sections(g, s, [], docs) for row in sec[2]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs; write nothing")
    parser.add_argument("--out", type=Path, default=None, help=f"the page (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else ROOT / DEFAULT_OUT
    shown = str(args.out) if args.out is not None else str(DEFAULT_OUT)
    text = reference_markdown()
    if args.check:
        current = out.read_text(encoding="utf-8") if out.is_file() else None
        if current != text:
            again = COMMAND if args.out is None else f"{COMMAND} --out {args.out}"
            print(f"{shown} is stale: run {again}", file=sys.stderr)
            return 1
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
