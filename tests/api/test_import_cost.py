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
