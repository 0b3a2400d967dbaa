"""The parameter server across hosts: the server on one simulated host, a worker on each of
two others (three network namespaces on a bridge), over `bigtrain run`."""
import os
import re
import secrets
import subprocess
import sys
import textwrap

import pytest

from tests.multihost import netns
from tests.multihost.test_two_hosts import REPO

SCRIPT = textwrap.dedent("""
    import socket
    import numpy as np
    import bigtrain
    from bigtrain.layers import Dense, Input
    from bigtrain.models import Model
    from bigtrain.parallel import ParameterServer

    rng = np.random.default_rng(0)
    x = rng.normal(size=(480, 12)).astype("float32")
    y = np.eye(3, dtype="float32")[(x @ rng.normal(size=(12, 3))).argmax(1)]
    bigtrain.set_seed(0)
    inp = Input(shape=(12,))
    model = Model(inp, Dense(3, activation="softmax")(Dense(16, activation="relu")(inp)))
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"],
                  learning_rate=1e-2)
    h = model.fit(x, y, epochs=6, batch_size=48, verbose=0, timeout=60,
                  strategy=ParameterServer(servers=1, mode="ssp", staleness=2))
    role = "server" if h.history == {} else "worker"
    acc = h.history["accuracy"][-1] if h.history else float("nan")
    print(f"DONE host={socket.gethostname()} role={role} acc={acc:.3f}", flush=True)
""")
DONE = re.compile(r"DONE host=(\S+) role=(\S+) acc=(\S+)")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_server_on_one_host_workers_on_two(tmp_path):
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    with netns.simulated_hosts(3) as hosts:
        endpoint = f"{hosts[0].hostname}:{secrets.SystemRandom().randint(20000, 40000)}"
        procs = []
        for rank, host in enumerate(hosts):
            argv = [sys.executable, "-m", "bigtrain.cli.main", "run", "--nnodes", "3",
                    "--node-rank", str(rank), "--nproc-per-node", "1", "--rdzv-endpoint",
                    endpoint, str(script)]
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": REPO,
                   "PYTHONUNBUFFERED": "1", "GLOO_SOCKET_IFNAME": host.ifname,
                   "HOME": os.environ.get("HOME", "/root")}
            procs.append(host.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, env=env, cwd=str(tmp_path)))
        outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n----\n".join(o[-3000:] for o in outs)
    done = {m.group(1): (m.group(2), m.group(3)) for o in outs for m in DONE.finditer(o)}
    roles = sorted(role for role, _ in done.values())
    assert roles == ["server", "worker", "worker"], done  # one server host, two worker hosts
    assert len(done) == 3  # each on its own host
    accs = [float(acc) for role, acc in done.values() if role == "worker"]
    assert all(a > 0.7 for a in accs), done
