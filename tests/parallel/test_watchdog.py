"""Hang watchdog: a rank that stalls before a collective is named, within the window, and
the job fails instead of hanging; ranks that never join the job are named too."""
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from bigtrain.diagnose.watchdog import (HangWatchdog, Heartbeat, WatchdogConfig, classify,
                                        hang_report)
from bigtrain.engine.callbacks.base import Callback
from tests.dist import run_ranks
from tests.parallel.strategy_cases import build, case_data

WINDOW_S = 3.0
STALL_STEP = 3


class _DictStore:
    """The part of a c10d Store the watchdog uses, in memory."""

    def __init__(self):
        self.data = {}

    def set(self, key, value):
        self.data[key] = value.encode()

    def get(self, key):
        return self.data[key]

    def check(self, keys):
        return all(k in self.data for k in keys)

    def delete_key(self, key):
        return self.data.pop(key, None) is not None


def _beat(seq, step, op, age_s=0.2, in_op_s=1.0):
    return {"seq": seq, "step": step, "op": op, "age_s": age_s, "in_op_s": in_op_s,
            "host": "h", "pid": 1}


def test_report_names_behind_and_missing_ranks():
    beats = {0: _beat(20, 3, "backward (+ gradient sync)", in_op_s=6.0),
             1: _beat(17, 3, "callbacks (batch begin)"),
             2: _beat(20, 3, "backward (+ gradient sync)"),
             3: None}
    assert classify(beats, stale_s=3.0) == ([1], [3])
    text = hang_report(0, beats, timeout_s=5.0, stale_s=3.0)
    assert "behind: rank 1 " in text and "missing: rank 3 " in text
    assert "rank 1: step 3, 'callbacks (batch begin)'" in text
    assert "no progress for 6.0 s in 'backward (+ gradient sync)' at step 3" in text
    stale = {**beats, 3: _beat(20, 3, "backward (+ gradient sync)", age_s=9.0)}
    assert classify(stale, stale_s=3.0) == ([1], [3])  # a silent heartbeat counts as missing
    same = {r: _beat(5, 0, "forward") for r in range(2)}
    assert classify(same, 3.0) == ([], [])
    assert "every rank is in the same operation" in hang_report(1, same, 5.0, 3.0)


def test_heartbeat_counts_operations_not_repeats():
    beat = Heartbeat()
    beat.enter("evaluate", step=4)
    seq = beat.state[0]
    beat.enter("evaluate")  # next evaluation batch: clock restarts, no new operation
    assert beat.state[:3] == (seq, 4, "evaluate")
    beat.enter("metrics all-reduce")
    assert beat.state[0] == seq + 1


def test_watchdog_fires_once_past_the_window_and_not_before():
    store, fired = _DictStore(), []
    beat = Heartbeat()
    config = WatchdogConfig(timeout_s=0.6, interval_s=0.1)
    dog = HangWatchdog(store, 0, 2, beat, config, on_hang=fired.append,
                       stream=open(os.devnull, "w"))
    dog.start()
    try:
        for _ in range(8):  # busy but progressing: never fires
            beat.enter("forward", 0)
            time.sleep(0.05)
            beat.enter("backward", 0)
            time.sleep(0.05)
        assert not fired
        assert json.loads(store.get("bigtrain/heartbeat/0"))["op"] in ("forward", "backward")
        t0 = time.monotonic()
        beat.enter("backward (+ gradient sync)", 1)
        while not fired and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        assert fired and 0.6 <= time.monotonic() - t0 < 5.0
        assert "missing: rank 1 " in fired[0]  # rank 1 never published a heartbeat
    finally:
        dog.stop()
    assert len(fired) == 1 and "bigtrain/heartbeat/0" not in store.data


def test_config_is_checked():
    with pytest.raises(ValueError, match="watchdog_timeout must be a positive"):
        WatchdogConfig(timeout_s=0)
    with pytest.raises(ValueError, match="shorter than watchdog_timeout"):
        WatchdogConfig(timeout_s=1.0, interval_s=2.0)
    assert WatchdogConfig.from_fit(True, 4).interval_s == 1.0
    assert WatchdogConfig.from_fit(False).enabled is False


class _StallAt(Callback):
    """On rank 1 only: sleep (far longer than the window) before step `step`."""
    main_process_only = False

    def __init__(self, rank, step, marker):
        super().__init__()
        self.rank, self.step, self.marker = rank, step, marker

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.step:
            with open(self.marker, "w") as f:
                f.write(str(time.time()))  # when this rank reached the stalled step
            if self.rank == 1:
                time.sleep(600)


def _stalled_ddp(rank, world_size, out_dir):
    from bigtrain.engine.loop import train
    from bigtrain.parallel import resolve_strategy
    from bigtrain.parallel.base import DistEnv
    sys.stderr = open(os.path.join(out_dir, f"stderr{rank}.txt"), "w", buffering=1)
    model, task = build("embed", steps=6, batch=8)
    task.callbacks = [_StallAt(rank, STALL_STEP, os.path.join(out_dir, f"reached{rank}"))]
    task.watchdog = WatchdogConfig(timeout_s=WINDOW_S, interval_s=0.5)
    strategy = resolve_strategy("ddp")
    strategy.setup(DistEnv(rank=rank, world_size=world_size, local_rank=rank,
                           local_world_size=world_size))
    train(task, strategy, model)
    return "finished"  # never reached: the watchdog ends both ranks


@pytest.mark.timeout(200)
def test_stalled_rank_is_named_and_the_group_fails(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        run_ranks(_stalled_ddp, 2, str(tmp_path), timeout=150)
    assert "exit code 1" in str(err.value)  # both ranks ended by the watchdog, no hang
    assert time.monotonic() - t0 < 140
    reports = {r: (tmp_path / f"stderr{r}.txt").read_text() for r in (0, 1)}
    for rank, text in reports.items():
        assert "bigtrain hang watchdog" in text, (rank, text)
        assert "behind: rank 1 " in text and "behind: rank 0" not in text, text
        assert f"rank 1: step {STALL_STEP}, 'callbacks (batch begin)'" in text, text
        assert f"rank 0: step {STALL_STEP}, 'backward (+ gradient sync)'" in text, text
    # rank 0 waits in the gradient all-reduce from the stall on: reported within the window
    # plus a few heartbeats (the file's last write is the report)
    stalled_at = float((tmp_path / "reached0").read_text())
    waited = os.path.getmtime(tmp_path / "stderr0.txt") - stalled_at
    assert WINDOW_S <= waited < WINDOW_S + 4.0, waited


class _StallRank1(Callback):
    """In a fit-launched job: rank 1 sleeps before step 2 (reads its rank from the launcher)."""
    main_process_only = False

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 2 and os.environ.get("RANK") == "1":
            time.sleep(600)


@pytest.mark.timeout(200)
def test_fit_launcher_reports_the_hang():
    model, _ = build("embed", steps=4, batch=8)
    x, y = case_data("embed", 32)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False, strategy="ddp",
                  devices=2, callbacks=[_StallRank1()], watchdog_timeout=WINDOW_S)
    message = str(err.value)
    assert "distributed fit failed" in message and "hang watchdog" in message, message
    assert "behind: rank 1 " in message, message
    assert time.monotonic() - t0 < 150


# ---- ranks that never join ----------------------------------------------------------------

_JOIN = textwrap.dedent("""
    import sys, time
    from bigtrain.launch.join import join_existing_job
    t0 = time.monotonic()
    try:
        join_existing_job(timeout_s=float(sys.argv[1]))
    except RuntimeError as e:
        print("JOIN FAILED after %.1f s: %s" % (time.monotonic() - t0, e), flush=True)
        sys.exit(3)
    print("JOINED", flush=True)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_rank(rank, world, port, timeout_s):
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", _JOIN, str(timeout_s)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.timeout(200)
def test_rank_that_never_arrives_is_named():
    timeout_s = 4.0
    world3 = _free_port()
    procs = {("3 ranks", r): _start_rank(r, 3, world3, timeout_s) for r in (0, 1)}
    procs[("no rank 0", 1)] = _start_rank(1, 2, _free_port(), timeout_s)
    outs = {k: p.communicate(timeout=150)[0] for k, p in procs.items()}
    for r in (0, 1):
        out = outs[("3 ranks", r)]
        assert procs[("3 ranks", r)].returncode == 3, out
        assert "rank 2 of 3 never joined the job within 4 s" in out, out
    out = outs[("no rank 0", 1)]
    assert procs[("no rank 0", 1)].returncode == 3, out
    assert "could not reach the job's store" in out and "rank 0, which hosts it" in out, out
