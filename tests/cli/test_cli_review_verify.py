"""`bigtrain verify` where every strategy refuses the devices asked for: nothing was checked,
so the exit status must not say the strategies passed."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = """\
import numpy as np
from bigtrain.layers import Dense, Input
from bigtrain.models import Model
x = np.random.RandomState(0).randn(64, 4).astype("float32")
i = Input(shape=(4,))
m = Model(inputs=i, outputs=Dense(1)(Dense(8, activation="relu")(i)))
m.compile(optimizer="sgd", loss="mse")
m.fit(x, x.sum(1, keepdims=True), epochs=1, batch_size=8, verbose=0)
"""


def test_verify_exits_1_when_every_strategy_refused_and_nothing_was_checked(tmp_path):
    (tmp_path / "fit.py").write_text(SCRIPT)
    out = subprocess.run([sys.executable, "-m", "bigtrain.cli.main", "verify", "fit.py",
                          "--strategies", "ddp", "--devices", "99", "--steps", "1"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"})
    assert "unsupported: batch_size=8" in out.stdout, out.stdout + out.stderr[-2000:]
    assert "0 passed, 0 failed" in out.stdout
    assert out.returncode == 1
    assert "no strategy could be checked" in out.stderr
