"""A fit that writes no report does not import matplotlib (about 0.35 s of a first fit)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # this checkout, not another one on the path

SCRIPT = """
import sys
import numpy as np
from bigtrain.layers import Dense, Input
from bigtrain.models import Model
x = np.random.rand(64, 20).astype("float32")
y = np.eye(3, dtype="float32")[np.random.randint(0, 3, 64)]
inp = Input(shape=(20,))
model = Model(inp, Dense(3, activation="softmax")(Dense(8, activation="relu")(inp)))
model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
model.fit(x, y, epochs=1, batch_size=32, verbose=0)
print("matplotlib" in sys.modules)
"""


def test_fit_without_a_report_does_not_import_matplotlib():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1:] == ["False"], out.stdout + out.stderr


IMPORTS = """
import sys
import bigtrain
from bigtrain.layers import Dense, Input
from bigtrain.models import Model, load_model
from bigtrain.callbacks import ModelCheckpoint
heavy = ("torch.distributed.tensor", "torch.distributed.checkpoint", "torch.distributed.optim",
         "torch.distributed.pipelining", "torch.distributed.fsdp", "bigtrain.parallel.sharded",
         "bigtrain.parallel.pipeline", "bigtrain.parallel.zero1")
print(" ".join(m for m in heavy if m in sys.modules) or "none")
from bigtrain.parallel import Sharded, resolve_strategy, strategy_names
print(type(resolve_strategy("zero1")).__name__, Sharded.__name__, len(strategy_names()))
"""


def test_importing_the_keras_front_leaves_sharding_and_checkpoint_packages_unloaded():
    """DTensor, DCP, ZeRO and the pipeline load on first use (about 1.3 s of every process
    start on 2 cores); the strategy classes and names still resolve."""
    out = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().splitlines()[-2:]
    assert first == "none", first
    from bigtrain.parallel.base import _BUILT_IN
    assert second.split() == ["Zero1", "Sharded", str(len(set(_BUILT_IN) | {"single"}))]
