"""The bad-input battery: every wrong thing a user can pass gets a clear error, fast, and
no existing file is lost.

One table (CASES) across the Python API, the `bigtrain` command and files on disk. Each
case runs under a time bound and must raise the named error with a message matching its
regex (the regex names what was wrong). After every case the module's saved model and
checkpoint must be byte-for-byte intact and still load.

World size on resume is not an error case: a checkpoint written by N ranks resumes on M
(tests/parallel/test_resume.py); the settings that must match mid-epoch are cases here.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

import bigtrain
from bigtrain.engine.checkpoint import CheckpointError, find_checkpoint
from bigtrain.layers import Dense, Input
from bigtrain.models import Model, load_model

REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 90.0  # a CLI case that runs longer than this hangs (the case fails)
PORT_CASE_S = 60.0  # a rendezvous on a port another process holds must fail within this


class CLIFailed(Exception):
    """A `bigtrain` command exited non-zero; the message is its output."""


@dataclass
class Ctx:
    """What the cases work on (a fresh scratch folder per case, shared good files)."""
    tmp: Path
    good_model: Path   # a saved model that must survive every case
    ckpt: Path         # a checkpoint_dir that must survive every case
    script: Path       # a tiny training script for the CLI


@dataclass(frozen=True)
class Case:
    """One bad input. `run(ctx)` must raise `error` with a message matching `match`
    (re.search, case-insensitive) within `limit_s` seconds."""
    id: str
    run: Callable[[Ctx], object]
    error: type | tuple
    match: str
    limit_s: float = 30.0


# ---- building blocks ------------------------------------------------------------------

def model(features=6, classes=3, loss="categorical_crossentropy", hidden=8) -> Model:
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(features,))
    m = Model(inp, Dense(classes, activation="softmax")(Dense(hidden, activation="relu")(inp)))
    m.compile(optimizer="adam", loss=loss)
    return m


def xy(n=32, features=6, classes=3):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, features)).astype("float32")
    ids = rng.integers(0, classes, n)
    return x, np.eye(classes, dtype="float32")[ids], ids


X, Y, IDS = xy()


def fit(*args, m=None, **kw):
    kw.setdefault("verbose", 0)
    kw.setdefault("batch_size", 8)
    return (m or model()).fit(*args, **kw)


def sparse_fit(x, y, **kw):
    return fit(x, y, m=model(loss="sparse_categorical_crossentropy"), **kw)


def with_nan(a, where, value=np.nan):
    a = a.copy()
    a[where] = value
    return a


def cli(*argv: str, cwd: Path | None = None, timeout: float = CLI_TIMEOUT_S) -> str:
    """Run `python -m bigtrain.cli.main ARGV`; raise CLIFailed(output) when it fails, and
    subprocess.TimeoutExpired (after killing its whole process group) when it hangs."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bigtrain.cli.main", *argv], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
    if proc.returncode != 0:
        raise CLIFailed(f"exit {proc.returncode}\n{out}\n{err}")
    return out


def _bound_port() -> socket.socket:
    """A listening socket on 127.0.0.1 that never answers (a port another job holds)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def run_on_busy_port(ctx: Ctx) -> str:
    with _bound_port() as s:
        port = s.getsockname()[1]
        return cli("run", "--nnodes", "1", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                   "--rdzv-endpoint", f"127.0.0.1:{port}", str(ctx.script), cwd=ctx.tmp,
                   timeout=PORT_CASE_S)


def copy_ckpt(ctx: Ctx) -> Path:
    dst = ctx.tmp / "ckpt"
    shutil.copytree(ctx.ckpt, dst)
    return dst


def newest(folder: Path) -> Path:
    return folder / json.loads((folder / "latest").read_text())["path"]


def corrupt_pointer(ctx: Ctx):
    folder = copy_ckpt(ctx)
    (folder / "latest").write_text("{not json")
    return fit(X, Y, checkpoint_dir=str(folder))


def truncated_dcp_data(ctx: Ctx):
    folder = copy_ckpt(ctx)
    for f in newest(folder).glob("*.distcp"):
        f.write_bytes(f.read_bytes()[:20])
    return fit(X, Y, checkpoint_dir=str(folder))


def truncated_model(ctx: Ctx):
    path = ctx.tmp / "half.bigtrain"
    data = ctx.good_model.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return load_model(str(path))


def weights_only_file(ctx: Ctx):
    path = ctx.tmp / "w.safetensors"
    model().save_weights(str(path))
    return load_model(str(path))


def foreign_safetensors(ctx: Ctx):
    from safetensors.torch import save_file
    path = ctx.tmp / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    return load_model(str(path))


def save_wrapped_module_over_good_file(ctx: Ctx):
    """A save that fails must leave the file it would have replaced intact."""
    return Model(torch.nn.Linear(6, 3)).save(str(ctx.good_model))


def save_into_a_file_as_folder(ctx: Ctx):
    blocker = ctx.tmp / "blocker"
    blocker.write_text("x")
    return model().save(str(blocker / "model.bigtrain"))


def run_dir_is_a_file(ctx: Ctx):
    blocker = ctx.tmp / "not_a_folder"
    blocker.write_text("x")
    return fit(X, Y, run_dir=str(blocker))


def checkpoint_dir_is_a_file(ctx: Ctx):
    blocker = ctx.tmp / "ckpt_file"
    blocker.write_text("x")
    return fit(X, Y, checkpoint_dir=str(blocker))


def script_file(ctx: Ctx, text: str) -> str:
    path = ctx.tmp / "models.py"
    path.write_text(text)
    return str(path)


# ---- the table ------------------------------------------------------------------------

CASES = [
    # shapes and dtypes
    Case("x-wrong-feature-count", lambda c: fit(X[:, :4], Y), ValueError,
         r"expects samples of shape \(6,\).*\(32, 4\)"),
    Case("x-extra-dimension", lambda c: fit(X[:, :, None], Y), ValueError,
         r"expects samples of shape \(6,\)"),
    Case("x-strings", lambda c: fit(X.astype(str), Y), (ValueError, TypeError),
         r"\bx\b.*(dtype|numeric|number|str)"),
    Case("y-wrong-one-hot-width", lambda c: fit(X, np.eye(5, dtype="float32")[IDS]),
         ValueError, r"(3 classes|shape \(3,\)|width|one-hot).*5|5.*(3 classes|shape \(3,\))"),
    # NaN / Inf
    Case("x-nan", lambda c: fit(with_nan(X, (3, 1)), Y), ValueError, r"1 NaN/Inf.*\(3, 1\)"),
    Case("x-inf", lambda c: fit(with_nan(X, (0, 0), np.inf), Y), ValueError, r"NaN/Inf.*x"),
    Case("y-nan", lambda c: fit(X, with_nan(Y, (2, 0))), ValueError, r"NaN/Inf.*y|y.*NaN/Inf"),
    # labels
    Case("labels-above-range", lambda c: sparse_fit(X, np.where(IDS == 0, 9, IDS)), ValueError,
         r"class ids in \[0, 2\].*9"),
    Case("labels-negative", lambda c: sparse_fit(X, np.where(IDS == 0, -1, IDS)), ValueError,
         r"class ids in \[0, 2\].*-1"),
    Case("labels-fractional", lambda c: sparse_fit(X, IDS + 0.5), ValueError,
         r"(integer|whole).*class"),
    Case("integer-labels-for-categorical-loss", lambda c: fit(X, IDS), ValueError,
         r"integer class ids.*sparse_categorical_crossentropy"),
    # sizes
    Case("empty-data", lambda c: fit(X[:0], Y[:0]), ValueError, r"empty"),
    Case("length-mismatch", lambda c: fit(X, Y[:7]), ValueError,
         r"same number of samples.*32.*7"),
    Case("batch-size-zero", lambda c: fit(X, Y, batch_size=0), ValueError,
         r"batch_size must be a positive integer"),
    Case("batch-size-string", lambda c: fit(X, Y, batch_size="8"), (ValueError, TypeError),
         r"batch_size"),
    Case("epochs-negative", lambda c: fit(X, Y, epochs=-1), ValueError, r"epochs"),
    Case("validation-split-above-one", lambda c: fit(X, Y, validation_split=1.5), ValueError,
         r"validation_split"),
    Case("accumulate-steps-zero", lambda c: fit(X, Y, accumulate_steps=0), ValueError,
         r"accumulate_steps"),
    Case("precision-unknown", lambda c: fit(X, Y, precision="fp8"), ValueError,
         r"precision.*fp8|fp8.*precision"),
    # strategies and devices (all must fail before any process starts: hence the short limits)
    Case("strategy-unknown", lambda c: fit(X, Y, strategy="ddpp"), ValueError,
         r"unknown strategy 'ddpp'.*ddp", limit_s=10),
    Case("strategy-wrong-type", lambda c: fit(X, Y, strategy=3), (ValueError, TypeError),
         r"strategy", limit_s=10),
    Case("devices-zero", lambda c: fit(X, Y, strategy="ddp", devices=0), ValueError,
         r"devices must be a positive integer", limit_s=10),
    Case("devices-word", lambda c: fit(X, Y, strategy="ddp", devices="two"), ValueError,
         r"devices must be a positive integer.*'two'", limit_s=10),
    Case("devices-cuda-without-gpu", lambda c: fit(X, Y, strategy="ddp", devices="cuda"),
         ValueError, r"no CUDA device", limit_s=10),
    Case("batch-smaller-than-ranks", lambda c: fit(X, Y, strategy="ddp", devices=3,
                                                    batch_size=2),
         ValueError, r"batch.*2.*3 (ranks|processes)|3 (ranks|processes).*batch", limit_s=10),
    Case("devices-negative", lambda c: fit(X, Y, strategy="ddp", devices=-2), ValueError,
         r"devices must be a positive integer.*-2", limit_s=10),
    # compile-time mistakes
    Case("fit-before-compile", lambda c: _uncompiled().fit(X, Y), RuntimeError,
         r"call model\.compile"),
    Case("optimizer-unknown", lambda c: model().compile(optimizer="adamm", loss="mse"),
         ValueError, r"unknown optimizer 'adamm'"),
    # checkpoints
    Case("checkpoint-every-without-dir", lambda c: fit(X, Y, checkpoint_every=2), ValueError,
         r"no checkpoint_dir"),
    Case("keep-last-zero", lambda c: fit(X, Y, checkpoint_dir=str(c.tmp / "k"), keep_last=0),
         ValueError, r"keep_last"),
    Case("checkpoint-dir-is-a-file", checkpoint_dir_is_a_file, (ValueError, OSError),
         r"checkpoint_dir.*(folder|directory)|not a directory"),
    Case("resume-path-missing", lambda c: fit(X, Y, checkpoint_dir=str(c.ckpt),
                                              resume=str(c.tmp / "step-00000777")),
         CheckpointError, r"step-00000777 does not exist.*resume='never'"),
    Case("resume-with-another-model", lambda c: fit(X, Y, m=model(hidden=5),
                                                    checkpoint_dir=str(copy_ckpt(c))),
         CheckpointError, r"does not fit this model.*shape mismatch"),
    Case("resume-with-another-optimizer", lambda c: fit(X, Y, m=_sgd_model(),
                                                        checkpoint_dir=str(copy_ckpt(c))),
         CheckpointError, r"saved with optimizer adam.*uses sgd"),
    Case("checkpoint-pointer-corrupt", corrupt_pointer, CheckpointError,
         r"'latest' pointer.*not JSON"),
    Case("checkpoint-data-truncated", truncated_dcp_data, (CheckpointError, RuntimeError),
         r"\.distcp|checkpoint.*(damaged|truncated|corrupt|unreadable)"),
    Case("run-dir-is-a-file", run_dir_is_a_file, (ValueError, OSError),
         r"run_dir.*(folder|directory)|not a directory"),
    # saved models
    Case("load-model-missing", lambda c: load_model(str(c.tmp / "nope.bigtrain")),
         FileNotFoundError, r"no such file.*nope\.bigtrain"),
    Case("load-model-truncated", truncated_model, ValueError,
         r"half\.bigtrain is not a bigtrain model"),
    Case("load-model-weights-only", weights_only_file, ValueError, r"holds weights only"),
    Case("load-model-foreign-safetensors", foreign_safetensors, ValueError,
         r"not written by bigtrain"),
    Case("load-model-directory", lambda c: load_model(str(c.tmp)), (ValueError, OSError),
         r"(is a directory|not a bigtrain model)"),
    Case("load-weights-other-architecture", lambda c: model(hidden=5).load_weights(
        str(c.good_model)), ValueError, r"do not fit this model.*shape mismatches"),
    Case("save-fails-over-existing-file", save_wrapped_module_over_good_file, ValueError,
         r"save_weights"),
    Case("save-into-a-file-as-folder", save_into_a_file_as_folder, (ValueError, OSError),
         r"blocker"),
    # the command line
    Case("cli-no-command", lambda c: cli(), CLIFailed, r"required: command|choose from",
         limit_s=CLI_TIMEOUT_S),
    Case("cli-train-missing-script", lambda c: cli("train", str(c.tmp / "nope.py")), CLIFailed,
         r"no such script: .*nope\.py", limit_s=CLI_TIMEOUT_S),
    Case("cli-summary-no-colon", lambda c: cli("summary", "nothing"), CLIFailed,
         r"MODULE:FUNCTION", limit_s=CLI_TIMEOUT_S),
    Case("cli-summary-missing-function", lambda c: cli("summary", script_file(
        c, "x = 1\n") + ":build"), CLIFailed, r"has no attribute 'build'", limit_s=CLI_TIMEOUT_S),
    Case("cli-summary-not-a-model", lambda c: cli("summary", script_file(
        c, "def build():\n    return 42\n") + ":build"), CLIFailed, r"did not give a model",
         limit_s=CLI_TIMEOUT_S),
    Case("cli-plan-zero-devices", lambda c: cli("plan", script_file(
        c, "import torch\ndef build():\n    return torch.nn.Linear(4, 2)\n") + ":build",
        "--devices", "0"), CLIFailed, r"devices", limit_s=CLI_TIMEOUT_S),
    Case("cli-report-missing-run-dir", lambda c: cli("report", str(c.tmp / "no_run")),
         CLIFailed, r"no_run", limit_s=CLI_TIMEOUT_S),
    Case("cli-doctor-run-dir-is-a-file", lambda c: cli("doctor", str(c.good_model)), CLIFailed,
         r"good\.bigtrain.*(run|folder|directory)", limit_s=CLI_TIMEOUT_S),
    Case("cli-export-missing-checkpoint", lambda c: cli("export", str(c.tmp / "none"),
                                                        str(c.tmp / "o.safetensors")),
         CLIFailed, r"no complete checkpoint|does not exist", limit_s=CLI_TIMEOUT_S),
    Case("cli-run-missing-script", lambda c: cli("run", "--nproc-per-node", "1",
                                                 str(c.tmp / "nope.py")),
         CLIFailed, r"nope\.py", limit_s=CLI_TIMEOUT_S),
    Case("cli-run-zero-processes", lambda c: cli("run", "--nproc-per-node", "0",
                                                 str(c.script)),
         CLIFailed, r"nproc.per.node", limit_s=CLI_TIMEOUT_S),
    Case("cli-run-port-in-use", run_on_busy_port, CLIFailed,
         r"127\.0\.0\.1:\d+.*(in use|refused|not respond|timed out|timeout)",
         limit_s=PORT_CASE_S),
]


def _uncompiled() -> Model:
    inp = Input(shape=(6,))
    return Model(inp, Dense(3)(inp))


def _sgd_model() -> Model:
    m = model()
    m.compile(optimizer="sgd", loss="categorical_crossentropy")
    return m


# ---- the good files every case must leave intact ----------------------------------------

def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    m = model()
    m.fit(X, Y, batch_size=8, epochs=1, verbose=0, checkpoint_dir=str(root / "ckpt"))
    m.save(str(root / "good.bigtrain"))
    script = root / "train.py"
    script.write_text("import bigtrain\nprint('ranks ok', bigtrain.is_main_process())\n")
    weights = {k: v.clone() for k, v in m.net.state_dict().items()}
    return root, weights, {p: _digest(root / p) for p in ("good.bigtrain", "ckpt")}, script


def test_the_table_is_large_and_unique():
    ids = [c.id for c in CASES]
    assert len(ids) >= 30 and len(set(ids)) == len(ids)


@pytest.mark.timeout(200)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, good, tmp_path):
    root, weights, digests, script = good
    ctx = Ctx(tmp=tmp_path, good_model=root / "good.bigtrain", ckpt=root / "ckpt", script=script)
    start = time.monotonic()
    try:
        with pytest.raises(case.error) as err:
            case.run(ctx)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case.id}: the command hung (no answer within {case.limit_s} s)")
    took = time.monotonic() - start
    assert err.match(f"(?is){case.match}"), str(err.value)
    assert took < case.limit_s, f"{case.id} took {took:.1f} s (limit {case.limit_s} s)"
    # nothing lost: the good files are unchanged and still load
    assert {p: _digest(root / p) for p in digests} == digests
    again = load_model(str(root / "good.bigtrain"))
    assert all(torch.equal(again.net.state_dict()[k], v) for k, v in weights.items())
    assert find_checkpoint(str(root / "ckpt")) is not None
