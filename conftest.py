"""README.md and the examples' docstrings run as tests (Sybil): see tests/readme/documents.py."""
from tests.readme.documents import pytest_collect_file  # noqa: F401

import pytest  # noqa: E402


def pytest_collection_modifyitems(items):
    # a README block may start several multi-process jobs one after another, and an example's
    # command up to 5 processes; each job is bounded by tests/readme/commands.LIMIT_S
    for item in items:
        if item.path.name == "README.md":
            item.add_marker(pytest.mark.timeout(900))
        elif item.path.parent.name == "examples":
            item.add_marker(pytest.mark.timeout(450))


class _Script(pytest.Module):
    """An example script named on the command line: Sybil runs its docstring's commands;
    pytest must not import it as a test module (it would train on import)."""

    def collect(self):
        return []


def pytest_pycollect_makemodule(module_path, parent):
    if module_path.parent.name == "examples":
        return _Script.from_parent(parent, path=module_path)
