"""README.md and the examples' docstrings run as tests (Sybil): see tests/readme/documents.py."""
from tests.readme.documents import pytest_collect_file  # noqa: F401
