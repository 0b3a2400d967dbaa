"""The whole package imports only downward, and no two files import each other.

DESIGN.md orders the layers cli > api > launch > engine > parallel > plan / diagnose / zoo /
data. ALLOWED below is that table: the top-level packages each one may import. The modules
directly under bigtrain/ (`bigtrain.layers`, `bigtrain.models`, ...) are the public face
(PUBLIC): they may import any layer, and only cli/ imports them. Every import statement counts,
including those inside functions (a lazy import is still an arrow), except those under
`if TYPE_CHECKING:`, which never run.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

import bigtrain

ROOT = pathlib.Path(bigtrain.__file__).parent
BOTTOM = {"plan", "diagnose", "zoo", "data"}
PUBLIC = None  # the layer of the modules directly under bigtrain/
ALLOWED = {
    "cli": {PUBLIC, "api", "launch", "engine", "parallel"} | BOTTOM,
    "api": {"launch", "engine", "parallel"} | BOTTOM,
    "launch": {"engine", "parallel"} | BOTTOM,
    "engine": {"parallel"} | BOTTOM,
    "parallel": BOTTOM,
    "plan": {"diagnose", "zoo", "data"},
    "diagnose": {"zoo", "data"},
    "zoo": {"data"},
    "data": set(),
}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING"


def _walk(tree: ast.AST):
    """ast.walk that skips `if TYPE_CHECKING:` bodies (annotations only, never executed)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                todo += child.orelse
            else:
                todo.append(child)


def imported_names(path: pathlib.Path, root: pathlib.Path) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of everything `path` imports; `from a import b` counts as
    `a.b`, relative imports are resolved, and importlib.import_module('x') counts as x."""
    package = list(path.relative_to(root.parent).with_suffix("").parts[:-1])
    found = []
    for node in _walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[:len(package) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__")):
            found.append((node.lineno, node.args[0].value))
    return found


def _file_of(name: str, root: pathlib.Path) -> pathlib.Path | None:
    """The file a dotted bigtrain name loads: the longest prefix that is a module or package
    (`bigtrain.engine.loop.run_rank` -> engine/loop.py, `bigtrain.parallel.Strategy` ->
    parallel/__init__.py)."""
    parts = name.split(".")
    if parts[0] != root.name:
        return None
    for n in range(len(parts), 0, -1):
        base = root.parent.joinpath(*parts[:n])
        if base.with_suffix(".py").is_file():
            return base.with_suffix(".py")
        if (base / "__init__.py").is_file():
            return base / "__init__.py"
    return None


def _layer(path: pathlib.Path, root: pathlib.Path) -> str | None:
    """Top-level package of a file, or None for the public modules directly under root."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else None


def import_graph(root: pathlib.Path) -> dict[pathlib.Path, dict[pathlib.Path, int]]:
    """file -> {imported bigtrain file: line of the first such import}."""
    graph = {}
    for path in sorted(root.rglob("*.py")):
        edges = graph.setdefault(path, {})
        for line, name in imported_names(path, root):
            target = _file_of(name, root)
            if target is not None and target != path:
                edges.setdefault(target, line)
    return graph


def upward_imports(root: pathlib.Path) -> list[str]:
    """'file:line imports file' for every arrow the ALLOWED table does not permit."""
    bad = []
    for path, edges in import_graph(root).items():
        src = _layer(path, root)
        for target, line in edges.items():
            dst = _layer(target, root)
            if src is None or dst == src:
                continue
            if dst not in ALLOWED.get(src, set()):
                bad.append(f"{path.relative_to(root)}:{line} imports {target.relative_to(root)}")
    return bad


def import_cycles(root: pathlib.Path) -> list[list[str]]:
    """Strongly connected groups of more than one file (Tarjan), each sorted; a package's
    __init__.py that re-exports its own modules is left out, since Python loads it first
    and the arrow back to it is the package, not a circle of files."""
    graph = {p: [t for t in e if not (t.name == "__init__.py" and p.is_relative_to(t.parent))]
             for p, e in import_graph(root).items()}
    index, low, stack, on, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(str(w.relative_to(root)))
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return sorted(groups)


def test_every_layer_imports_only_downward():
    assert len(import_graph(ROOT)) > 100, f"checker found too few files under {ROOT}"
    assert upward_imports(ROOT) == [], (
        "a layer imports one above it (see ALLOWED); pass the dependency in from above "
        "or move the code to the layer it needs")


def test_no_two_files_import_each_other():
    assert import_cycles(ROOT) == [], (
        "these files import each other (directly or around a circle); move the shared "
        "part into a module both can import")


def _tree(tmp_path, files: dict[str, str]) -> pathlib.Path:
    root = tmp_path / "bigtrain"
    for name, source in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        for pkg in path.relative_to(root).parents:
            (root / pkg / "__init__.py").touch()
        path.write_text(source)
    return root


@pytest.mark.parametrize("source", [
    "import bigtrain.engine.loop\n",
    "from bigtrain.api import model\n",
    "from ..launch import runner\n",
    "def f():\n    from bigtrain.engine.loop import run_rank\n",
    "import importlib\nm = importlib.import_module('bigtrain.cli.main')\n",
    "from bigtrain import models\n",
])
def test_checker_catches_an_upward_import(tmp_path, source):
    root = _tree(tmp_path, {"parallel/x.py": source, "engine/loop.py": "", "api/model.py": "",
                            "launch/runner.py": "", "cli/main.py": "", "models.py": ""})
    assert len(upward_imports(root)) == 1


@pytest.mark.parametrize("source", [
    "import torch\n",
    "from bigtrain.plan import cost\n",
    "from ..data.text import TextCorpus\n",
    "from . import y\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from bigtrain.api.model import Model\n",
])
def test_checker_allows_downward_imports(tmp_path, source):
    root = _tree(tmp_path, {"parallel/x.py": source, "parallel/y.py": "", "plan/cost.py": "",
                            "data/text.py": "", "api/model.py": ""})
    assert upward_imports(root) == []


def test_checker_finds_a_circle_of_three_files(tmp_path):
    root = _tree(tmp_path, {"engine/a.py": "from bigtrain.engine import b\n",
                            "engine/b.py": "def f():\n    from bigtrain.engine.c import g\n",
                            "engine/c.py": "import bigtrain.engine.a\n",
                            "engine/d.py": "import bigtrain.engine.a\n"})
    assert import_cycles(root) == [["engine/a.py", "engine/b.py", "engine/c.py"]]


def test_checker_ignores_a_package_init_reexporting_its_modules(tmp_path):
    root = _tree(tmp_path, {"engine/__init__.py": "from bigtrain.engine.a import f\n",
                            "engine/a.py": "from bigtrain.engine import b\n", "engine/b.py": ""})
    assert import_cycles(root) == []
