"""Loading the user's target of a command: `path/to/file.py:name` or `package.module:name`
(`bigtrain summary`, `bigtrain plan`)."""
from __future__ import annotations

import importlib
import importlib.util
import os

FORM = "module_or_file.py:attribute (e.g. examples/models.py:build_model)"


def load_object(spec: str):
    """`path/to/file.py:name` or `package.module:name` -> the object."""
    if ":" not in spec:
        raise SystemExit(f"expected MODULE:FUNCTION, i.e. {FORM}, got {spec!r}")
    target, name = spec.rsplit(":", 1)
    if target.endswith(".py"):
        if not os.path.isfile(target):
            raise SystemExit(f"no such file: {target}; expected {FORM}")
        mod_spec = importlib.util.spec_from_file_location("_bigtrain_user_module", target)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        module = _import_module(target, spec)
    if not hasattr(module, name):
        raise SystemExit(f"{target} has no attribute {name!r}")
    return getattr(module, name)


def _import_module(target: str, spec: str):
    """Import `target`; a missing `target` (not a missing import inside it, whose traceback
    the user needs) is one line naming the expected form."""
    not_found = SystemExit(f"no module or .py file named {target!r} (in {spec!r}); "
                           f"expected {FORM}")
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        if e.name is None or not (target == e.name or target.startswith(e.name + ".")):
            raise
        raise not_found from None
    except (ValueError, TypeError):  # an empty or relative name such as "" or ".models"
        raise not_found from None
