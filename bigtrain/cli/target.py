"""Loading the user's target of a command: `path/to/file.py:name` or `package.module:name`
(`bigtrain summary`, `bigtrain plan`)."""
from __future__ import annotations

import importlib
import importlib.util
import os


def load_object(spec: str):
    """`path/to/file.py:name` or `package.module:name` -> the object."""
    if ":" not in spec:
        raise SystemExit(f"expected MODULE:FUNCTION (e.g. examples/models.py:build), got {spec!r}")
    target, name = spec.rsplit(":", 1)
    if target.endswith(".py"):
        if not os.path.isfile(target):
            raise SystemExit(f"no such file: {target}")
        mod_spec = importlib.util.spec_from_file_location("_bigtrain_user_module", target)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    if not hasattr(module, name):
        raise SystemExit(f"{target} has no attribute {name!r}")
    return getattr(module, name)
