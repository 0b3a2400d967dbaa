"""zoo/ is plain single-device PyTorch: no file in it may import a layer above it.

DESIGN.md orders the layers cli > api > engine > parallel > plan > diagnose > zoo > data;
zoo may use data (and third-party packages) only. The checker parses every .py file under
bigtrain/zoo with `ast`, so a new file is covered without touching this test.
"""
import ast
import pathlib

import pytest

import bigtrain.zoo

FORBIDDEN = ("cli", "api", "engine", "parallel", "plan", "diagnose")
ZOO_DIR = pathlib.Path(bigtrain.zoo.__file__).parent


def _module_of(path: pathlib.Path, root: pathlib.Path) -> list[str]:
    """Dotted package parts of the package that holds `path`, e.g. ['bigtrain', 'zoo']."""
    rel = path.relative_to(root.parent.parent).with_suffix("")  # bigtrain/zoo/x
    return list(rel.parts[:-1])


def imported_modules(path: pathlib.Path, root: pathlib.Path) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of everything `path` imports, relative imports resolved
    and `from a import b` counted as `a.b`; string arguments of importlib.import_module and
    __import__ count too."""
    package = _module_of(path, root)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
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


def layering_violations(root: pathlib.Path) -> list[str]:
    """'file:line imports name' for every import of a forbidden bigtrain layer under root."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        for line, name in imported_modules(path, root):
            parts = name.split(".")
            if parts[0] == "bigtrain" and len(parts) > 1 and parts[1] in FORBIDDEN:
                bad.append(f"{path.relative_to(root.parent)}:{line} imports {name}")
    return bad


def test_zoo_imports_no_higher_layer():
    files = list(ZOO_DIR.rglob("*.py"))
    assert any(p.name == "mlp.py" for p in files), f"checker found no zoo files in {ZOO_DIR}"
    assert layering_violations(ZOO_DIR) == [], (
        "zoo/ must stay single-device PyTorch; move this code to the layer it needs")


@pytest.mark.parametrize("source", [
    "import bigtrain.engine.loop\n",
    "from bigtrain.parallel import base\n",
    "from bigtrain import api\n",
    "from ..cli import main\n",
    "from .. import plan\n",
    "from ..diagnose.doctor import run\n",
    "import importlib\nm = importlib.import_module('bigtrain.engine')\n",
    "def f():\n    from bigtrain.engine.callbacks import History\n",
])
def test_checker_catches_forbidden_imports(tmp_path, source):
    zoo = tmp_path / "bigtrain" / "zoo"
    (zoo / "sub").mkdir(parents=True)
    # The file sits one package deeper (zoo/sub/), so relative imports need one more dot.
    (zoo / "sub" / "bad.py").write_text(source.replace("from ..", "from ..."))
    assert len(layering_violations(zoo)) == 1


@pytest.mark.parametrize("source", [
    "import torch\nfrom torch import nn\n",
    "from bigtrain.data import mnist_5k\n",
    "from ..data.text import TextCorpus\n",
    "from . import mlp\n",
    "import bigtrain_engine\n",
])
def test_checker_allows_lower_layers_and_third_party(tmp_path, source):
    zoo = tmp_path / "bigtrain" / "zoo"
    zoo.mkdir(parents=True)
    (zoo / "ok.py").write_text(source)
    assert layering_violations(zoo) == []
