"""plan/ and diagnose/ sit below parallel/, engine/, api/ and cli/: they never import them."""
import ast
from pathlib import Path

import bigtrain

FORBIDDEN = ("bigtrain.api", "bigtrain.engine", "bigtrain.cli", "bigtrain.parallel")


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_plan_and_diagnose_import_only_lower_layers():
    root = Path(bigtrain.__file__).parent
    bad = [(f.relative_to(root), m) for pkg in ("plan", "diagnose")
           for f in (root / pkg).glob("*.py") for m in _imports(f)
           if m.startswith(FORBIDDEN) or (pkg == "diagnose" and m.startswith("bigtrain.plan"))]
    assert bad == []
