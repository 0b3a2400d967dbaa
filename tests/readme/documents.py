"""README.md and the examples' docstrings as tests, collected by Sybil (root conftest.py).

- README.md: every ```python block runs in one namespace per document (the fragments after
  the seed example use its model and data; `<!-- invisible-code-block: python -->` comments
  name `x, y` and check the results); every ```bash block runs through commands.run_block.
  The document runs in a fresh working folder (the checkpoint example writes `ckpt/`) with
  BIGTRAIN_DATA_FRACTION=0.1, so the seed example trains its 10 epochs on a tenth of the
  verses: seconds, not minutes, and still well above chance.
- examples/*.py: each command line of a module docstring (`python examples/...`,
  `bigtrain ...`, `torchrun ...`) runs through commands.run_block; the script itself is never
  imported (it would train).
"""
from __future__ import annotations

import os
import re
import tempfile

from sybil import Document, Region, Sybil
from sybil.document import PythonDocStringDocument
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser

from tests.readme.commands import QUICK_ENV, REPO, run_block


def _run_bash(example) -> None:
    run_block(example.parsed)


def _setup(namespace: dict) -> None:
    import bigtrain
    saved = {k: os.environ.get(k) for k in QUICK_ENV}
    os.environ.update(QUICK_ENV)
    folder = tempfile.TemporaryDirectory(prefix="bigtrain-readme-")
    namespace["_readme_restore"] = (os.getcwd(), saved, folder)
    os.chdir(folder.name)
    bigtrain.set_seed(0)
    bigtrain.clear_session()


def _teardown(namespace: dict) -> None:
    cwd, saved, folder = namespace.pop("_readme_restore")
    os.chdir(cwd)
    folder.cleanup()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class DocstringCommands(PythonDocStringDocument):
    """Docstrings of a script, parsed without importing it (an example trains on import)."""

    def __init__(self, text: str, path: str) -> None:
        Document.__init__(self, text, path)


# an indented docstring line that runs something, up to its comment
_COMMAND = re.compile(r"^[ \t]+(?P<command>(?:python|bigtrain|torchrun) [^\n#]*)", re.MULTILINE)


def docstring_commands(document: Document):
    for match in _COMMAND.finditer(document.text):
        yield Region(match.start("command"), match.end("command"),
                     parsed=match.group("command").strip(), evaluator=_run_bash)


readme = Sybil(
    parsers=[PythonCodeBlockParser(), CodeBlockParser("bash", evaluator=_run_bash), SkipParser()],
    patterns=["README.md"], path=str(REPO), setup=_setup, teardown=_teardown)
examples = Sybil(parsers=[docstring_commands], patterns=["examples/*.py"], path=str(REPO),
                 document_types={".py": DocstringCommands})
pytest_collect_file = (readme + examples).pytest()
