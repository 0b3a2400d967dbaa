"""A single-host job listens on 127.0.0.1 only.

torch.distributed has no authentication: anything that can reach a rendezvous store or a
gloo listener can join or disturb the job. On one host bigtrain therefore keeps every
listener on loopback. Each test starts a two-rank job that pauses in training (a callback
sleeps on rank 0 after the first batch, the other rank waits in its collective), and
meanwhile reads the listening TCP sockets of the whole process tree from /proc (each pid's
socket fds matched with its network namespace's /proc/<pid>/net/tcp and tcp6), then lets it
go on (a second file ends the pause early). Every one must be bound to 127.0.0.1 (or ::1).

The machine running the tests may map its hostname to 127.0.0.1 (then gloo's default,
binding to whatever the hostname resolves to, looks safe by accident). The last test runs the
job on a simulated host whose hostname resolves to a LAN address, as on a real server.
"""
from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.multihost import netns

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAUSE_S = 40.0  # rank 0 waits at most this long (or until released); sockets are read meanwhile
LOOPBACK = {"127.0.0.1", "::1"}

SCRIPT = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import bigtrain
    from bigtrain.callbacks import Callback
    from bigtrain.layers import Dense, Input
    from bigtrain.models import Model

    READY, PAUSE, DEVICES = sys.argv[1], float(sys.argv[2]), sys.argv[3]

    class PauseOnce(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0 and bigtrain.is_main_process() and not os.path.exists(READY):
                open(READY, "w").close()
                end = time.monotonic() + PAUSE
                while not os.path.exists(READY + ".go") and time.monotonic() < end:
                    time.sleep(0.05)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = np.eye(2, dtype="float32")[rng.integers(0, 2, 64)]
    inp = Input(shape=(8,))
    model = Model(inp, Dense(2, activation="softmax")(inp))
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    devices = None if DEVICES == "launcher" else int(DEVICES)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, strategy="ddp", devices=devices,
              callbacks=[PauseOnce()], timeout=60)
    print("FIT DONE", flush=True)
""")


def descendants(root: int) -> set[int]:
    """`root` and every process below it (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


def _hex_addr(text: str) -> str:
    """/proc/net/tcp's little-endian hex address -> dotted IPv4 or IPv6 text."""
    raw = bytes.fromhex(text)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    addr = ipaddress.ip_address(words)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return str(addr.ipv4_mapped)
    return str(addr)


def listening_sockets(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket the processes in `pids` hold."""
    out = []
    for pid in pids:
        try:
            inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1]
                      for fd in os.listdir(f"/proc/{pid}/fd")
                      if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")}
        except OSError:
            continue  # the process ended meanwhile
        for table in ("tcp", "tcp6"):
            try:
                with open(f"/proc/{pid}/net/{table}", encoding="ascii") as f:
                    rows = [line.split() for line in f.readlines()[1:]]
            except OSError:
                continue
            for row in rows:
                if row[3] == "0A" and row[9] in inodes:  # 0A: LISTEN
                    addr, port = row[1].rsplit(":", 1)
                    out.append((pid, _hex_addr(addr), int(port, 16)))
    return sorted(set(out))


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GLOO_", "MASTER_", "TORCHELASTIC", "NCCL_"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    env.update(PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    return env


def observe_listeners(argv: list[str], ready: str, popen=subprocess.Popen, timeout=240.0):
    """Start `argv`, wait until the job pauses (`ready` appears), read its listeners, wait
    for the job to finish; returns (listeners with their command lines, job output)."""
    proc = popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                 env=_env(), cwd=os.path.dirname(ready))
    try:
        deadline = time.monotonic() + timeout
        while not os.path.exists(ready):
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.communicate(timeout=30)[0] if proc.poll() is not None else ""
                pytest.fail(f"the job never reached its first batch (rc {proc.poll()}):\n{out}")
            time.sleep(0.2)
        time.sleep(1.0)  # rank 1 is in its all-reduce by now
        seen = [(pid, addr, port, _cmdline(pid))
                for pid, addr, port in listening_sockets(descendants(proc.pid))]
        open(ready + ".go", "w").close()  # release the paused rank
        out = proc.communicate(timeout=timeout)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 0 and "FIT DONE" in out, out
    return seen, out


def _assert_loopback_only(seen):
    assert seen, "no listening socket found: the check would pass vacuously"
    exposed = [s for s in seen if s[1] not in LOOPBACK]
    assert not exposed, "listeners reachable from the network:\n" + "\n".join(
        f"  pid {pid} {addr}:{port}  ({cmd})" for pid, addr, port, cmd in exposed)


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(SCRIPT)
    return path


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_fit_devices_listens_on_loopback_only(tmp_path, script):
    ready = str(tmp_path / "ready")
    seen, _ = observe_listeners([sys.executable, str(script), ready, str(PAUSE_S), "2"], ready)
    _assert_loopback_only(seen)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_bigtrain_run_listens_on_loopback_only(tmp_path, script):
    ready = str(tmp_path / "ready")
    argv = [sys.executable, "-m", "bigtrain.cli.main", "run", "--nproc-per-node", "2",
            str(script), ready, str(PAUSE_S), "launcher"]
    seen, _ = observe_listeners(argv, ready)
    _assert_loopback_only(seen)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_loopback_only_when_the_hostname_resolves_to_a_lan_address(tmp_path, script):
    """On a simulated host whose hostname maps to its eth0 address (a typical server)."""
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    ready = str(tmp_path / "ready")
    with netns.simulated_hosts(2, prefix="server") as (host, _peer):
        check = host.run(["getent", "hosts", host.hostname], timeout=30)
        assert host.addr in check.stdout, check  # the premise: hostname -> LAN address
        seen, _ = observe_listeners([sys.executable, str(script), ready, str(PAUSE_S), "2"],
                                    ready, popen=lambda argv, **kw: host.popen(argv, **kw))
    _assert_loopback_only(seen)
