"""A lost host comes back and the job resumes from its checkpoint, on two simulated hosts.

    host0 (10.a.b.1, eth0) <--- veth ---> host1 (10.a.b.2, eth0)

Both hosts run, as the README says for restarts across hosts:

    GLOO_SOCKET_IFNAME=eth0 bigtrain run --nnodes 2 --nproc-per-node 1 --max-restarts 2 \\
        --rdzv-backend c10d --rdzv-endpoint host0:PORT train.py CKPT

with `fit(checkpoint_dir=CKPT, checkpoint_every=2)` (the namespaces share one filesystem,
as hosts share a network filesystem). Once a checkpoint exists every process of host1 is
killed with SIGKILL (a machine losing power), and the same command is started on host1
again (the machine back). host0's agent sees its rank fail, restarts it, and the c10d
rendezvous forms a new round with the new host1 agent once host1's old agent stops
sending heartbeats (KEEP_ALIVE). The job must finish, resume from the checkpoint (not from
step 0) and end with the weights of an uninterrupted run. Meanwhile host0 says so in one line
("node 1 lost (...), waiting for it, restart 1 of 2"), without a traceback or "failed".

Why c10d and not the static rendezvous: under static rendezvous all attempts share node 0's
store and name their keys by each node's restart count; host1 started again counts from 0
while host0 has moved on, so host1 reads an earlier attempt's keys (gloo's addresses of
ranks that are gone) and fails with "Gloo connectFullMesh failed ... timed out connecting".
Needs root and iproute2; skipped otherwise.
"""
from __future__ import annotations

import math
import os
import re
import secrets
import subprocess
import sys
import textwrap
import time

import pytest

from tests.multihost.agents import REPO, TOY_MODEL, Agent

TIMEOUT_S = 10           # the job's process-group timeout (fit(timeout=...))
EPOCHS, BATCHES = 3, 4   # 128 samples in batches of 32: 12 steps
EVERY = 2                # checkpoint every 2 steps
PAUSE_S = 0.5            # per step: host1 is killed with about 5 s of training left
KEEP_ALIVE = "keep_alive_interval=1,keep_alive_max_attempt=5"  # a dead agent is dropped in ~5 s
LIMIT_S = 100            # start to finish, with the kill and the comeback

SCRIPT = textwrap.dedent("""
    import os, socket, sys, time
    import numpy as np
    import bigtrain
    from bigtrain.callbacks import Callback
    from bigtrain.layers import Dense, Input
    from bigtrain.models import Model

    ckpt, pause, epochs, every, timeout = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), \\
        int(sys.argv[4]), float(sys.argv[5])

    class Beat(Callback):
        def on_train_batch_end(self, batch, logs=None):
            time.sleep(pause)

    TOY_MODEL
    extra = {} if ckpt == "-" else {"strategy": "ddp", "timeout": timeout,
                                    "checkpoint_dir": ckpt, "checkpoint_every": every}
    h = model.fit(x, y, epochs=epochs, batch_size=32, shuffle=False, verbose=1,
                  callbacks=[Beat()], **extra)
    w = np.concatenate([a.ravel() for a in model.get_weights()]).astype("float64").sum() \\
        if bigtrain.is_main_process() else float("nan")
    print(f"DONE host={socket.gethostname()} rank={os.environ.get('RANK', '-')} "
          f"loss={h.history['loss'][-1]:.6f} wsum={w:.6f}", flush=True)
""").replace("TOY_MODEL\n", TOY_MODEL)

DONE = re.compile(r"DONE host=(\S+) rank=(\S+) loss=(\S+) wsum=(\S+)")
RESUMED = r"Resuming from checkpoint step (\d+)"
LOST_PEER = r"Connection (closed|reset) by peer"


def uninterrupted_wsum(script) -> float:
    """The final weights' sum of the same training in one process, without pauses."""
    out = subprocess.run([sys.executable, str(script), "-", "0", str(EPOCHS), "0", "0"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": REPO})
    m = DONE.search(out.stdout)
    assert m, out.stdout + out.stderr
    return float(m.group(4))


def wait_for_checkpoint(ckpt: str, agents: list[Agent], deadline: float) -> None:
    while not os.path.exists(os.path.join(ckpt, "latest")):
        report = "\n".join(a.output[-3000:] for a in agents)
        assert time.monotonic() < deadline, f"no checkpoint within {LIMIT_S} s\n{report}"
        assert all(a.proc.poll() is None for a in agents), report
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(LIMIT_S + 60)
def test_a_lost_host_rejoins_and_the_job_resumes_from_its_checkpoint(hosts, tmp_path):
    script, ckpt = tmp_path / "train.py", str(tmp_path / "ckpt")
    script.write_text(SCRIPT)
    endpoint = f"{hosts[0].hostname}:{secrets.SystemRandom().randint(20000, 40000)}"
    flags = ["--nnodes", "2", "--nproc-per-node", "1", "--max-restarts", "2",
             "--monitor-interval", "0.5", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
             "--rdzv-conf", KEEP_ALIVE]
    args = [ckpt, str(PAUSE_S), str(EPOCHS), str(EVERY), str(TIMEOUT_S)]
    started = time.monotonic()
    deadline = started + LIMIT_S
    host0, host1 = (Agent(h, flags, script, args) for h in hosts)

    wait_for_checkpoint(ckpt, [host0, host1], deadline)
    killed_at, seen = time.monotonic(), len(host0.lines)
    assert hosts[1].kill_all(), "host1 had no processes to kill"
    assert not DONE.search(host0.output), "training ended before host1 was killed"
    host1_again = Agent(hosts[1], flags, script, args)  # the machine is back
    codes = [a.wait(deadline - time.monotonic()) for a in (host0, host1_again)]
    ended = time.monotonic()

    report = "\n".join(f"---- {name} exit {c}\n{a.output[-4000:]}" for name, a, c in
                       (("host0", host0, codes[0]), ("host1 again", host1_again, codes[1])))
    assert codes == [0, 0], report
    lost, resumed = host0.first(LOST_PEER), host0.first(RESUMED)
    assert lost and lost[0] > killed_at, f"host0 never saw host1 go\n{report}"
    assert resumed, f"the job did not resume from a checkpoint\n{report}"
    after = "".join(host0.lines[seen:])  # the survivor: one line, no traceback, no "failed"
    assert re.search(rf"bigtrain: node [01] lost \(Connection (closed|reset) by peer, "
                     rf"{re.escape(hosts[1].addr)}\), waiting for it, restart 1 of 2",
                     after), report
    assert "Traceback" not in after and "failed (exitcode" not in after, report
    step = int(resumed[1].group(1))
    assert 0 < step < EPOCHS * BATCHES, report  # from host1's loss on, not from the start
    done = [DONE.search(a.output) for a in (host0, host1_again)]
    assert [m.group(1) for m in done] == ["host0", "host1"], report
    assert all(math.isfinite(float(m.group(3))) for m in done), report
    main = next(m for m in done if m.group(2) == "0")
    assert float(main.group(4)) == pytest.approx(uninterrupted_wsum(script), abs=1e-3)
    with open(os.path.join(ckpt, "latest"), encoding="utf-8") as f:
        assert f'"step": {EPOCHS * BATCHES}' in f.read()  # the checkpoints went on to the end
    print(f"host1 lost noticed after {lost[0] - killed_at:.1f} s, resumed from step {step} "
          f"{resumed[0] - killed_at:.1f} s after the kill; job {ended - started:.1f} s")
    assert lost[0] - killed_at < TIMEOUT_S
