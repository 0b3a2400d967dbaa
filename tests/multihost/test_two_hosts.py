"""Two hosts (network namespaces joined by a veth cable, each with its own hostname and
hosts file): `bigtrain run --nnodes 2` trains to completion, and faults end in clear errors.

    host0 (10.a.b.1, eth0) <--- veth ---> host1 (10.a.b.2, eth0)

On each host: `bigtrain run --nnodes 2 --node-rank R --nproc-per-node 1
--rdzv-endpoint host0:PORT train.py` with GLOO_SOCKET_IFNAME=eth0, as the README says for
real hosts. Faults: every process of host1 killed with SIGKILL (a machine lost) and host1's
cable unplugged (`ip link set eth0 down`). The process-group timeout is TIMEOUT_S
(`fit(timeout=...)`); the survivors must fail with a message naming the cause within it
(plus the slack of a loaded CI machine). Needs root and iproute2; skipped otherwise.
"""
from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import textwrap
import time

import pytest

from tests.multihost import netns
from tests.multihost.agents import REPO, TOY_MODEL, Agent

TIMEOUT_S = 10          # the jobs' process-group timeout (fit(timeout=...))
SLACK_S = 45            # start-up and teardown of torch on a loaded 2-core machine
JOB_LIMIT_S = 300       # a healthy two-host job must finish within this

SCRIPT = textwrap.dedent("""
    import os, socket, sys, time
    import numpy as np
    import bigtrain
    from bigtrain.callbacks import Callback
    from bigtrain.layers import Dense, Input
    from bigtrain.models import Model

    strategy, timeout, pause, epochs = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), \\
        int(sys.argv[4])

    class Beat(Callback):  # marks progress; `pause` keeps a long job in training
        def on_train_batch_end(self, batch, logs=None):
            print(f"STEP batch={batch}", flush=True)
            time.sleep(pause)

    TOY_MODEL
    extra = {} if strategy == "single" else {"strategy": strategy, "timeout": timeout}
    h = model.fit(x, y, epochs=epochs, batch_size=32, shuffle=False, verbose=0,
                  callbacks=[Beat()], **extra)
    # after a sharded fit the full weights live on rank 0 (the others hold shards)
    w = np.concatenate([a.ravel() for a in model.get_weights()]).astype("float64").sum() \
        if bigtrain.is_main_process() else float("nan")
    print(f"DONE host={socket.gethostname()} rank={os.environ.get('RANK', '-')} "
          f"loss={h.history['loss'][-1]:.6f} wsum={w:.6f}", flush=True)
""").replace("TOY_MODEL\n", TOY_MODEL)

DONE = re.compile(r"DONE host=(\S+) rank=(\S+) loss=(\S+) wsum=(\S+)")


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(SCRIPT)
    return path


def start_job(hosts, script, strategy: str, pause: float = 0.0, epochs: int = 2):
    endpoint = f"{hosts[0].hostname}:{secrets.SystemRandom().randint(20000, 40000)}"
    args = [strategy, str(TIMEOUT_S), str(pause), str(epochs)]
    return [Agent(h, ["--nnodes", "2", "--node-rank", str(r), "--nproc-per-node", "1",
                      "--rdzv-endpoint", endpoint], script, args)
            for r, h in enumerate(hosts)]


def wait_until_training(nodes, limit_s: float = JOB_LIMIT_S) -> None:
    """Until rank 0 (callbacks run there) has trained a step."""
    deadline = time.monotonic() + limit_s
    while not any(line.startswith("STEP") for line in nodes[0].lines):
        assert time.monotonic() < deadline, "\n".join(n.output[-3000:] for n in nodes)
        assert all(n.proc.poll() is None for n in nodes), "\n".join(n.output for n in nodes)
        time.sleep(0.2)
    time.sleep(1.0)  # a few steps in


def single_process_result(script) -> tuple[float, float]:
    out = subprocess.run([sys.executable, str(script), "single", "0", "0", "2"],
                         capture_output=True, text=True, timeout=JOB_LIMIT_S,
                         env={**os.environ, "PYTHONPATH": REPO})
    m = DONE.search(out.stdout)
    assert m, out.stdout + out.stderr
    return float(m.group(3)), float(m.group(4))


@pytest.mark.slow
@pytest.mark.timeout(2 * JOB_LIMIT_S + 120)
@pytest.mark.parametrize("strategy", ["ddp", "zero3"])
def test_two_hosts_train_to_completion(hosts, script, strategy):
    nodes = start_job(hosts, script, strategy)
    codes = [n.wait(JOB_LIMIT_S) for n in nodes]
    assert codes == [0, 0], "\n".join(n.output[-4000:] for n in nodes)
    done = [DONE.search(n.output) for n in nodes]
    assert [m.group(1) for m in done] == ["host0", "host1"]  # each ran on its own host
    assert sorted(m.group(2) for m in done) == ["0", "1"]
    loss, wsum = single_process_result(script)  # the same global batch in one process
    for m in done:
        assert float(m.group(3)) == pytest.approx(loss, abs=1e-4)
    main = next(m for m in done if m.group(2) == "0")
    assert float(main.group(4)) == pytest.approx(wsum, abs=1e-3)


@pytest.mark.slow
@pytest.mark.timeout(JOB_LIMIT_S + 120)
def test_a_killed_host_is_detected_within_seconds(hosts, script):
    nodes = start_job(hosts, script, "ddp", pause=0.2, epochs=200)
    wait_until_training(nodes)
    killed_at = time.monotonic()
    assert hosts[1].kill_all(), "host1 had no processes to kill"
    code = nodes[0].wait(TIMEOUT_S + SLACK_S)
    took = time.monotonic() - killed_at
    assert code not in (None, 0), f"host0 did not fail in {took:.0f} s:\n{nodes[0].output}"
    out = nodes[0].output
    assert re.search(r"Connection (reset|closed) by peer|Broken pipe", out), out[-4000:]
    assert re.search(rf"{hosts[1].addr}", out), "the error does not name the lost host"
    assert re.search(r"train\.py FAILED", out), out[-4000:]


@pytest.mark.slow
@pytest.mark.timeout(JOB_LIMIT_S + 180)
def test_a_cut_link_ends_in_a_clear_error_on_both_sides(hosts, script):
    nodes = start_job(hosts, script, "ddp", pause=0.2, epochs=200)
    wait_until_training(nodes)
    cut_at = time.monotonic()
    hosts[1].set_link(up=False)
    codes = [n.wait(max(0.0, TIMEOUT_S + SLACK_S - (time.monotonic() - cut_at)))
             for n in nodes]
    took = time.monotonic() - cut_at
    report = "\n".join(f"---- host{i} exit {c}\n{n.output[-3000:]}"
                       for i, (n, c) in enumerate(zip(nodes, codes)))
    assert codes[0] not in (None, 0), f"host0 still running {took:.0f} s after the cut\n{report}"
    assert re.search(rf"Timed out waiting {TIMEOUT_S * 1000}ms", nodes[0].output), report
    assert codes[1] not in (None, 0), (f"host1 (the cut-off one) still running {took:.0f} s "
                                       f"after the cut (timeout {TIMEOUT_S} s)\n{report}")
    assert re.search(r"Timed out|timeout|unreachable", nodes[1].output, re.I), report


def test_simulated_hosts_leave_nothing_behind():
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    with pytest.raises(RuntimeError, match="boom"):
        with netns.simulated_hosts(2) as (h0, h1):
            names = (h0.netns, h1.netns)
            hosts_file = os.path.join(netns.ETC_NETNS, h0.netns, "hosts")
            assert h1.hostname in open(hosts_file).read()
            out = h1.run(["hostname"], timeout=30)
            assert out.stdout.strip() == "host1", out
            h0.popen(["sleep", "300"])  # a process still running at teardown
            raise RuntimeError("boom")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            timeout=30).stdout
    assert not any(n in listed for n in names)
    assert not os.path.exists(hosts_file)
