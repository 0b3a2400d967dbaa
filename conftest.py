"""README.md and the examples' docstrings run as tests (Sybil): see tests/readme/documents.py."""
from pathlib import Path

from tests.readme.documents import pytest_collect_file  # noqa: F401

import pytest  # noqa: E402

#: the example scripts (their docstrings' commands are tests); tests/examples/ holds real
#: test modules and must be imported as such
EXAMPLES = Path(__file__).resolve().parent / "examples"


def pytest_collection_modifyitems(items):
    # a README block may start several multi-process jobs one after another, and an example's
    # command up to 5 processes; each job is bounded by tests/readme/commands.LIMIT_S
    for item in items:
        if item.path.name == "README.md":
            item.add_marker(pytest.mark.timeout(900))
        elif item.path.parent == EXAMPLES:
            item.add_marker(pytest.mark.timeout(450))


class _Script(pytest.Module):
    """An example script named on the command line: Sybil runs its docstring's commands;
    pytest must not import it as a test module (it would train on import)."""

    def collect(self):
        return []


def pytest_pycollect_makemodule(module_path, parent):
    if Path(module_path).resolve().parent == EXAMPLES:
        return _Script.from_parent(parent, path=module_path)


# ---- process exit ---------------------------------------------------------------------------
# Tests that run a strategy in this process (one-rank FSDP groups, DTensor meshes) leave gloo's
# device and its event-loop thread alive until interpreter teardown, where the device's
# destructor can race that thread (gloo aborts on "nfds != -1", exit code 134, after every
# test passed). Once pytest has reported, end the process without that teardown, keeping the
# exit status.
_exit_status: list[int] = []


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    import sys
    if _exit_status and "torch.distributed" in sys.modules and not hasattr(sys, "ps1"):
        import os
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])
