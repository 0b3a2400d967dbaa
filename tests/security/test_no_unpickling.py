"""Loading a file a user was handed never runs code from it.

A pickle can run any callable while it loads (`__reduce__`). Each test below plants a
malicious pickle, whose loading would create a marker file, under a name a user would load
(`model.bigtrain`, `weights.safetensors`, a checkpoint's DCP `.metadata`), and asserts that
bigtrain refuses the file with an error naming it and that the marker never appears.

A static test then reads bigtrain's source (AST, not text) and fails on any call that can
unpickle: `pickle.load(s)`, `cloudpickle.load(s)`, `torch.load` without `weights_only=True`,
`np.load(..., allow_pickle=True)`, and torch.distributed.checkpoint readers (DCP's
`FileSystemReader.read_metadata` is a plain `pickle.load` of `.metadata`). One call is allowed,
listed in ALLOWED with its reason.
"""
from __future__ import annotations

import ast
import builtins
import json
import pathlib
import pickle

import numpy as np
import pytest
import torch

import bigtrain
from bigtrain.layers import Dense, Input
from bigtrain.models import Model, load_model

PACKAGE = pathlib.Path(bigtrain.__file__).parent


class Evil:
    """Unpickling this object opens (creates) `marker` for writing."""

    def __init__(self, marker: pathlib.Path):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def tiny_model() -> Model:
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(6,))
    model = Model(inp, Dense(3, activation="softmax")(Dense(8, activation="relu")(inp)))
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    return model


def tiny_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype("float32")
    return x, np.eye(3, dtype="float32")[rng.integers(0, 3, 16)]


def plant(path: pathlib.Path, marker: pathlib.Path, how: str) -> None:
    """Write a malicious file at `path`: a raw pickle or torch.save's zip with one inside."""
    if how == "pickle":
        path.write_bytes(pickle.dumps(Evil(marker), protocol=4))
    else:
        torch.save({"layers.dense.linear.weight": Evil(marker)}, path)
    assert not marker.exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["pickle", "torch.save"])
@pytest.mark.parametrize("name", ["model.bigtrain", "model.keras", "model.h5", "model.pt"])
def test_load_model_refuses_a_pickle(tmp_path, name, how):
    path, marker = tmp_path / name, tmp_path / "PWNED"
    plant(path, marker, how)
    with pytest.raises(ValueError, match=f"{name} is not a bigtrain model.*safetensors"):
        load_model(str(path))
    assert not marker.exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["pickle", "torch.save"])
@pytest.mark.parametrize("name", ["weights.safetensors", "weights.pt", "weights.bin"])
def test_load_weights_refuses_a_pickle(tmp_path, name, how):
    path, marker = tmp_path / name, tmp_path / "PWNED"
    plant(path, marker, how)
    model = tiny_model()
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    with pytest.raises(ValueError, match=f"{name} is not a bigtrain model or weights file"):
        model.load_weights(str(path))
    assert not marker.exists()
    after = model.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights untouched


@pytest.fixture
def checkpoint_dir(tmp_path):
    """A real checkpoint folder (one epoch, one checkpoint) written by fit."""
    folder = tmp_path / "ckpt"
    tiny_model().fit(*tiny_data(), batch_size=8, epochs=1, verbose=0, checkpoint_dir=str(folder))
    newest = folder / json.loads((folder / "latest").read_text())["path"]
    assert (newest / ".metadata").is_file()
    return folder, newest


def _poison_metadata(newest: pathlib.Path, marker: pathlib.Path) -> None:
    """Replace DCP's `.metadata` (a pickle by DCP's design) with a malicious one."""
    (newest / ".metadata").write_bytes(pickle.dumps(Evil(marker), protocol=4))


@pytest.mark.timeout(120)
def test_resuming_from_a_poisoned_checkpoint_runs_no_code(tmp_path, checkpoint_dir):
    from bigtrain.engine.checkpoint import CheckpointError
    folder, newest = checkpoint_dir
    marker = tmp_path / "PWNED"
    _poison_metadata(newest, marker)
    with pytest.raises(CheckpointError, match=r"\.metadata|DCP metadata"):
        tiny_model().fit(*tiny_data(), batch_size=8, epochs=2, verbose=0,
                         checkpoint_dir=str(folder))
    assert not marker.exists(), "resuming a checkpoint unpickled its .metadata and ran code"


@pytest.mark.timeout(120)
def test_exporting_a_poisoned_checkpoint_runs_no_code(tmp_path, checkpoint_dir):
    from bigtrain.engine.checkpoint import CheckpointError, export_safetensors
    folder, newest = checkpoint_dir
    marker = tmp_path / "PWNED"
    _poison_metadata(newest, marker)
    with pytest.raises(CheckpointError, match=r"\.metadata|DCP metadata"):
        export_safetensors(str(folder), str(tmp_path / "out.safetensors"))
    assert not marker.exists(), "export_safetensors unpickled the checkpoint's .metadata"
    assert not (tmp_path / "out.safetensors").exists()


# ---- static check ----------------------------------------------------------------------

# (file relative to the package, function, call) -> why it is safe
ALLOWED = {
    ("launch/launcher.py", "_worker", "cloudpickle.load"):
        "each launched rank reads the payload that launch() wrote moments before into its "
        "own private TemporaryDirectory (mode 0700); it carries the user's model and classes "
        "from __main__, which only cloudpickle can send; no user-supplied path reaches it",
    # DCP checkpoints: every read goes through bigtrain.engine.safe_dcp, whose reader
    # unpickles `.metadata` with an allow-list and whose planner loads non-tensor items with
    # torch.load(weights_only=True); the poisoned-checkpoint tests below prove it end to end
    ("engine/safe_dcp.py", "<module>", "FileSystemReader"):
        "SafeFileSystemReader subclasses it to replace read_metadata with an allow-list unpickler",
    ("engine/checkpoint.py", "_dcp_metadata", "?.read_metadata"):
        "SafeFileSystemReader(path).read_metadata(): the allow-list unpickler",
    ("engine/checkpoint.py", "_dcp", "dcp.load"):
        "called with storage_reader=SafeFileSystemReader and planner=SafeLoadPlanner",
}

UNPICKLING = {"pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads",
              "pickle.Unpickler", "dill.load", "dill.loads", "joblib.load", "pd.read_pickle",
              "pandas.read_pickle"}
# torch.distributed.checkpoint: every reader ends in FileSystemReader.read_metadata, a plain
# pickle.load of the `.metadata` file
DCP_READERS = {"dcp.load", "dcp.state_dict_loader.load", "FileSystemReader",
               "torch.distributed.checkpoint.load", "read_metadata"}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return "?"


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _unsafe(node: ast.AST) -> tuple[str, str] | None:
    """(what, why) when this node can unpickle, else None. DCP readers are flagged wherever
    they are named (also when passed along uncalled, e.g. `_dcp(dcp.load, ...)`)."""
    if isinstance(node, ast.Attribute) and (_name(node) in DCP_READERS or
                                            node.attr in ("FileSystemReader", "read_metadata")):
        return _name(node), "DCP's FileSystemReader.read_metadata is pickle.load of .metadata"
    if isinstance(node, ast.Name) and node.id == "FileSystemReader":
        return node.id, "DCP's FileSystemReader.read_metadata is pickle.load of .metadata"
    if not isinstance(node, ast.Call):
        return None
    name = _name(node.func)
    if name in UNPICKLING:
        return name, "unpickles its input"
    if name == "torch.load" and not _is_true(_kw(node, "weights_only")):
        return name, "torch.load without weights_only=True"
    allow = _kw(node, "allow_pickle")
    if name in ("np.load", "numpy.load") and allow is not None and \
            not (isinstance(allow, ast.Constant) and allow.value is False):
        return name, "np.load with allow_pickle"
    return None


def _functions(tree: ast.Module):
    """(name, node) of every function, innermost last, plus the module itself."""
    yield "<module>", tree
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node


def unsafe_calls(root: pathlib.Path = PACKAGE) -> list[tuple[str, str, str, int, str]]:
    """(file, function, what, line, why) for every place in the package that can unpickle;
    `function` is the innermost function holding it."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for owner, func in _functions(tree):  # inner functions come later and win
            for node in ast.walk(func):
                hit = _unsafe(node)
                if hit:
                    found[(rel, node.lineno, node.col_offset)] = (owner, *hit)
    out = {(rel, owner, what, line, why) for (rel, line, _), (owner, what, why) in found.items()}
    return sorted(out)


def test_the_scanner_finds_what_it_should(tmp_path):
    """The scanner itself: it flags each unsafe form and passes the safe ones."""
    (tmp_path / "m.py").write_text(
        "import pickle, torch, numpy as np\n"
        "from torch.distributed.checkpoint import FileSystemReader\n"
        "import torch.distributed.checkpoint as dcp\n"
        "def bad(p):\n"
        "    pickle.load(open(p, 'rb')); torch.load(p)\n"
        "    torch.load(p, weights_only=False)\n"
        "    np.load(p, allow_pickle=True); FileSystemReader(p).read_metadata(); dcp.load({}, p)\n"
        "def good(p):\n"
        "    torch.load(p, weights_only=True); np.load(p); np.load(p, allow_pickle=False)\n")
    calls = [(c[1], c[2]) for c in unsafe_calls(tmp_path)]
    assert ("good", "torch.load") not in calls and all(o == "bad" for o, _ in calls)
    assert {c for _, c in calls} >= {"pickle.load", "torch.load", "np.load", "FileSystemReader",
                                     "dcp.load"}
    assert calls.count(("bad", "torch.load")) == 2


def test_package_never_unpickles_user_files():
    calls = unsafe_calls()
    bad = [f"{f}:{line} in {owner}(): {call} ({why})" for f, owner, call, line, why in calls
           if (f, owner, call) not in ALLOWED]
    assert not bad, ("calls that can unpickle a user-supplied file (use safetensors/JSON, "
                     "torch.load(weights_only=True), or add a reasoned entry to ALLOWED):\n  "
                     + "\n  ".join(bad))
    # every allowance is still needed (a stale entry would hide a new call in its place)
    used = {(f, o, c) for f, o, c, _, _ in calls}
    assert set(ALLOWED) <= used, f"stale ALLOWED entries: {set(ALLOWED) - used}"
