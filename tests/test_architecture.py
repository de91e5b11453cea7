"""The package's import graph has no cycles, counting function-level imports too (a cycle hidden inside a
function is still one module needing the other to exist first)."""

from __future__ import annotations

import ast

from exp3rt import CONF_DIR

PACKAGE = CONF_DIR.parent / "exp3rt"


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("exp3rt", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(
            ".__init__"
        )
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("exp3rt"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("exp3rt")}
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(u: str) -> None:
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if v not in graph:
                continue
            if state.get(v) == "open":
                found.append(stack[stack.index(v) :] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_the_package_has_no_import_cycle():
    assert cycles(import_graph()) == []


# Lower layers never import higher ones: config and helpers → data/models → teacher/baselines → student →
# inference → evaluation → pipeline/compare/recipes → cli. Teacher and student meet only through artifacts.
LAYERS = {
    "exp3rt.data": 1,
    "exp3rt.models": 1,
    "exp3rt.teacher": 2,
    "exp3rt.baselines": 2,
    "exp3rt.student": 3,
    "exp3rt.inference": 4,
    "exp3rt.evaluation": 5,
    "exp3rt.pipeline": 6,
    "exp3rt.compare": 6,
    "exp3rt.recipes": 6,
    "exp3rt.cli": 7,
    "exp3rt.__main__": 8,
}
# the tiny offline tokenizer learns its words from the extractive teacher's sentence templates, so the
# demo's rationales tokenise to whole words
KNOWN = {("exp3rt.models.tiny", "exp3rt.teacher.backends")}


def layer_of(module: str) -> int:
    hits = [(len(k), v) for k, v in LAYERS.items() if module == k or module.startswith(k + ".")]
    return max(hits)[1] if hits else 0  # the package's top-level helpers: layer 0


def test_no_module_imports_a_higher_layer_nor_do_teacher_and_student_meet():
    upward = []
    for module, deps in sorted(import_graph().items()):
        for dep in sorted(deps):
            if (module, dep) in KNOWN:
                continue
            if layer_of(dep) > layer_of(module):
                upward.append(f"{module} -> {dep}")
            if {(module.split(".") + [""])[1], (dep.split(".") + [""])[1]} == {"teacher", "student"}:
                upward.append(f"{module} -> {dep}")
    assert upward == []


def test_the_layer_check_catches_an_upward_import():
    assert (
        layer_of("exp3rt.student.lightning") > layer_of("exp3rt.teacher.annotate") > layer_of("exp3rt.config")
    )


# An import of the package's own modules belongs at the top of the module. One inside a function is kept
# only to defer a heavy library (torch, transformers, pytorch_lightning, vllm, openai, scipy, …) past
# import time, e.g. so `exp3rt-pipeline --help` and the data-only paths never load torch, or to break an
# import cycle; it says which with a `# heavy: …` or `# cycle: …` comment on the line above its group of
# imports (or on one of its lines).
REASON = ("# heavy:", "# cycle:")


def unexplained_function_imports(source: str) -> list[int]:
    """Line numbers of function-level ``exp3rt`` imports whose group of consecutive imports carries no
    reason comment."""
    tree, lines = ast.parse(source), source.splitlines()
    bad = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for block in ast.walk(fn):
            for body in (getattr(block, f, None) for f in ("body", "orelse", "finalbody")):
                if not isinstance(body, list):
                    continue
                groups, run = [], []
                for stmt in body:
                    if isinstance(stmt, ast.Import | ast.ImportFrom):
                        run.append(stmt)
                    elif run:
                        groups.append(run)
                        run = []
                groups += [run] if run else []
                for group in groups:
                    own = [
                        s
                        for s in group
                        if any(
                            n == "exp3rt" or n.startswith("exp3rt.")
                            for n in (
                                [s.module or ""]
                                if isinstance(s, ast.ImportFrom)
                                else [a.name for a in s.names]
                            )
                        )
                    ]
                    text = lines[group[0].lineno - 2 : group[-1].end_lineno]
                    if own and not any(reason in line for line in text for reason in REASON):
                        bad += [s.lineno for s in own]
    return sorted(set(bad))


def test_the_reason_check_catches_an_unexplained_function_import():
    bare = "def f():\n    import torch\n    from exp3rt.config import validate\n    return validate\n"
    said = "def f():\n    # heavy: torch\n    import torch\n    from exp3rt.student.model import x\n"
    assert unexplained_function_imports(bare) == [3]
    assert unexplained_function_imports(said) == []


def test_every_function_level_import_of_the_package_says_why():
    bad = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line in unexplained_function_imports(path.read_text())
    ]
    assert bad == [], "move these imports to the module's top, or say `# heavy: <library>` / `# cycle: …`"
