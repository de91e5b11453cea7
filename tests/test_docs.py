"""The README and docs/ stay usable: every relative markdown link points at a file (and, with a
``#fragment`` into a markdown file, at a heading) that exists; the README stays a user's page of at most
250 lines and shows the test command CI runs (``make test``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _strip_code(text: str) -> str:
    """Fenced blocks go; inline code spans keep their text (a link's label may be code)."""
    return _FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its label
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in _HEADING.findall(_strip_code(path.read_text(encoding="utf-8"))):
        base = slug(heading)
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return out


def broken_links(path: Path) -> list[str]:
    """Each relative link of ``path`` whose file (or heading) does not exist, as 'file: target (why)'."""
    problems = []
    for target in _LINK.findall(_strip_code(path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto: ...
            continue
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{path.name}: {target} (no such file)")
        elif fragment and dest.suffix == ".md" and dest.is_file() and fragment not in anchors(dest):
            problems.append(f"{path.name}: {target} (no heading #{fragment} in {dest.name})")
    return problems


def test_docs_exist():
    assert (ROOT / "docs" / "README.md").is_file()
    assert len(doc_files()) > 2


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert broken_links(path) == []


def test_readme_is_short_and_shows_the_test_command():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    assert "make test" in text
    assert "make demo" in text


def test_every_docs_page_is_linked_from_the_index():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    linked = {t.partition("#")[0] for t in _LINK.findall(index)}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert pages <= linked, f"not in docs/README.md: {sorted(pages - linked)}"


def test_checker_catches_a_broken_link(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md) [ok](other.md#a-section) [ok](#page) [web](https://example.org/x)\n"
        "[gone](missing.md) [bad anchor](other.md#no-such) ![img](pic.png)\n"
        "```\n[in code](not-checked.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "page.md: missing.md (no such file)",
        "page.md: other.md#no-such (no heading #no-such in other.md)",
        "page.md: pic.png (no such file)",
    ]


def _reference_row(text: str, key: str) -> str:
    rows = [line for line in text.splitlines() if line.startswith(f"| `{key}` |")]
    assert len(rows) == 1, f"{key}: {len(rows)} rows"
    return rows[0]


def test_config_reference_is_current():
    """docs/config_reference.md is what the generator renders from exp3rt/config.py (CI's staleness check)."""
    from exp3rt.config_reference import reference_markdown

    committed = (ROOT / "docs" / "config_reference.md").read_text(encoding="utf-8")
    assert committed == reference_markdown(), (
        "docs/config_reference.md is stale: run python -m exp3rt.config_reference"
    )


def test_config_reference_reads_types_defaults_and_comments():
    from exp3rt.config_reference import documented_keys, parse_comments, reference_markdown

    text = reference_markdown()
    row = _reference_row(text, "eval.rerank_rating_weight")  # three comment lines above the field
    assert "`float \\| null`" in row and "`null`" in row
    assert "null: order by the expected rating alone (the paper's)" in row and "plain rating order" in row
    assert "`32-true`" in _reference_row(text, "trainer.precision")
    assert "`OPENAI_API_KEY`" in _reference_row(text, "teacher.api_key_env")
    assert "never from config" in _reference_row(text, "teacher.api_key_env")  # a trailing comment
    assert "`one of test, valid`" in _reference_row(text, "eval.split")  # an enum shows its values
    assert "a hyperparameter search optimises on valid" in _reference_row(text, "eval.split")  # inside ()
    assert "`required`" in _reference_row(text, "dataset.name")  # MISSING
    assert "`${exp3rt_slurm_tasks_per_node:}`" in _reference_row(text, "trainer.slurm_tasks_per_node")
    assert "type: ignore" not in text
    assert "`[1, 5, 10]`" in _reference_row(text, "eval.ks")
    assert '`"\\n---\\n"`' in _reference_row(text, "student_prompt.set_separator")
    assert "`dataset.scale.min`" in text and "### teacher.batch" in text  # nested dataclasses
    assert "Presets: `cpu`, `ddp`," in text
    assert text.index("## dataset") < text.index("## split") < text.index("## student_prompt")
    assert "dataset.kcore.user" in documented_keys() and len(documented_keys()) > 200
    doc = parse_comments(
        "class A:\n    '''Doc.'''\n\n    # above\n    x: int = 1\n    y: int = (\n        2  # in\n    )\n"
    )
    assert doc["A"].doc == "Doc." and doc["A"].fields == {"x": "above", "y": "in"}


def test_config_reference_check_flags_a_stale_file(tmp_path, capsys):
    from exp3rt.config_reference import main, reference_markdown

    out = tmp_path / "config_reference.md"
    assert main(["--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == reference_markdown()
    assert main(["--check", "--out", str(out)]) == 0
    out.write_text(reference_markdown().replace("`32-true`", "`bf16-mixed`"), encoding="utf-8")
    assert main(["--check", "--out", str(out)]) == 1
    assert "is stale: run python -m exp3rt.config_reference" in capsys.readouterr().err
    assert "bf16-mixed" in out.read_text(encoding="utf-8")  # --check writes nothing
