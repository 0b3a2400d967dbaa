"""`bigtrain run` on a simulated host, its output collected line by line as it comes, each
line with the time it arrived (for measuring how long a fault took to notice).

    node = Agent(host, ["--nnodes", "2", "--rdzv-endpoint", "host0:29400", ...], script, args)
    node.wait(timeout=60); node.output
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

from tests.multihost import netns

#: The model and data every multi-host training script builds (a 12 -> 16 -> 3 classifier on
#: 128 fixed samples), so runs on different hosts and an in-process reference agree.
TOY_MODEL = """\
rng = np.random.default_rng(0)
x = rng.normal(size=(128, 12)).astype("float32")
y = np.eye(3, dtype="float32")[(x @ rng.normal(size=(12, 3))).argmax(1)]
bigtrain.set_seed(0)
inp = Input(shape=(12,))
model = Model(inp, Dense(3, activation="softmax")(Dense(16, activation="relu")(inp)))
model.compile(optimizer="adam", loss="categorical_crossentropy", learning_rate=1e-2)
"""

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Agent:
    """One node's `bigtrain run FLAGS SCRIPT ARGS` on `host` (GLOO_SOCKET_IFNAME=its eth0)."""

    def __init__(self, host: netns.Host, flags: list[str], script, args: list[str]):
        argv = [sys.executable, "-m", "bigtrain.cli.main", "run", *flags, str(script), *args]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": REPO,
               "PYTHONUNBUFFERED": "1", "GLOO_SOCKET_IFNAME": host.ifname,
               "HOME": os.environ.get("HOME", "/root")}
        self.host = host
        self.lines: list[str] = []
        self.times: list[float] = []  # time.monotonic() at which each line arrived
        self.proc = host.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, cwd=os.path.dirname(script))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.times.append(time.monotonic())
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def first(self, pattern: str) -> tuple[float, re.Match] | None:
        """(arrival time, match) of the first line matching `pattern`, or None."""
        for t, line in zip(list(self.times), list(self.lines)):
            m = re.search(pattern, line)
            if m:
                return t, m
        return None

    def wait(self, timeout: float) -> int | None:
        """Exit code, or None when still running after `timeout` seconds."""
        try:
            self.proc.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(timeout=10)
        return self.proc.returncode
