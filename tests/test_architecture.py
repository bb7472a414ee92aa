"""The package's shape: no import cycles, evaluation independent of the models, families
independent of each other.  Every import counts, those inside functions too (a lazy
import hides a cycle from the interpreter, not from a reader)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "caloforge"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module → the caloforge modules it imports (a package import counts as its ``__init__``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                # `from pkg import sub` imports the submodule; `from mod import name` the module
                candidates = [f"{target}.{alias.name}" for alias in node.names]
                candidates = [c for c in candidates if c in modules] or [target]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            graph[name].update(c for c in candidates if c in modules and c != name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    assert "caloforge.io" in graph and graph["caloforge.cli"], "the walk found the package"


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_evaluation_does_not_depend_on_models_or_training():
    graph = import_graph()
    arrows = [(m, t) for m, targets in graph.items() if m.startswith("caloforge.evaluate")
              for t in targets if t.startswith(("caloforge.models", "caloforge.train"))]
    assert arrows == []


@pytest.mark.parametrize("lower", ["caloforge.io", "caloforge.geometry", "caloforge.config", "caloforge.errors"])
def test_the_base_layers_import_nothing_above_them(lower):
    above = ("caloforge.models", "caloforge.evaluate", "caloforge.train", "caloforge.cli", "caloforge.generate",
             "caloforge.tuning", "caloforge.production")
    graph = import_graph()
    arrows = [(m, t) for m, targets in graph.items() if m == lower or m.startswith(lower + ".")
              for t in targets if t.startswith(above)]
    assert arrows == []


def test_model_families_never_import_each_other():
    from caloforge.models import families

    graph = import_graph()
    family_modules = {m for m in graph if m.startswith("caloforge.models.")
                      and not m.startswith(("caloforge.models.parts", "caloforge.models.base"))}
    assert len(family_modules) >= len(families()) - 1  # one file a family (a few families share none)
    arrows = [(m, t) for m in family_modules for t in graph[m] if t in family_modules]
    assert arrows == []


def test_the_layout_page_names_every_module_and_package():
    """docs/architecture.md is where a newcomer finds the room for a change: it cannot go stale."""
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    rooms = [p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")]
    rooms += [p.name + "/" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()]
    missing = [r for r in rooms if (r if r.endswith("/") else f"{r}.py") not in page]
    assert missing == []


def test_the_readme_lists_every_command():
    """The README's command list is the front door's map of the CLI: every command is on it."""
    from caloforge.cli import app

    readme = (PACKAGE.parent / "README.md").read_text()
    names = [c.name or c.callback.__name__ for c in app.registered_commands] + [g.name for g in app.registered_groups]
    assert [n for n in names if f"caloforge {n} " not in readme] == []


def test_every_data_file_of_the_package_is_installed():
    """A wheel carries only the package data pyproject.toml names: a file left out works in the
    editable checkout and is missing for a user (the Geant4 sources are compiled on first use)."""
    import tomllib

    patterns = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    installed = {p for pattern in patterns["caloforge"] for p in PACKAGE.glob(pattern)}
    data = {p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
            and "__pycache__" not in p.parts}
    assert sorted(str(p.relative_to(PACKAGE)) for p in data - installed) == []
