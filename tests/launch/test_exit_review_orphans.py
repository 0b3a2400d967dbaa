"""A launcher killed with SIGKILL takes its ranks with it (bigtrain.launch.parent_watch).

torch's elastic agent starts each rank in a session of its own and stops them on SIGINT or
SIGTERM; SIGKILL gives it no chance, and the ranks went on running (here: sleeping a
minute; in a job: training, or waiting in a collective for the group timeout)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

LAUNCHER_PID_ENV = "BIGTRAIN_LAUNCHER_PID"  # bigtrain.launch.parent_watch.LAUNCHER_PID_ENV
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_JOB_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_",
                  "OMPI_COMM_WORLD_", "PMI_", "TORCHELASTIC_", LAUNCHER_PID_ENV)

RANK_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import bigtrain
    open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.pid"), "w").write(str(os.getpid()))
    time.sleep(60)
""")

FIT_LAUNCH_SCRIPT = textwrap.dedent("""
    import os, sys, time, types
    from bigtrain.launch.launcher import launch

    def sleeper(task, strategy, owner, env):
        path = os.path.join(sys.argv[1], f"rank{env.rank}.pid")
        open(path, "w").write(str(os.getpid()))
        time.sleep(60)

    launch(types.SimpleNamespace(train=None, val=None), None, 2, model_owner=None,
           run_fn=sleeper, timeout=60)
""")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_JOB_VARIABLES)}
    return {**env, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_launcher_and_wait(argv: list[str], folder, limit_s: float = 60.0) -> list[int]:
    """Start `argv`, wait for both ranks' pid files, SIGKILL the launcher; the ranks still
    alive 10 s later (an empty list when they all ended)."""
    proc = subprocess.Popen(argv, cwd=folder, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + limit_s
        files = [folder / f"rank{r}.pid" for r in range(2)]
        while not all(f.exists() and f.read_text() for f in files):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the ranks did not start"
            time.sleep(0.05)
        pids = [int(f.read_text()) for f in files]
        assert all(map(_alive, pids))
        proc.kill()
        proc.wait()
        end = time.monotonic() + 10
        while any(map(_alive, pids)) and time.monotonic() < end:
            time.sleep(0.05)
        return [p for p in pids if _alive(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in pids:  # never leave a rank behind, whatever the outcome
            if _alive(p):
                os.kill(p, signal.SIGKILL)
        proc.stderr.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_bigtrain_run_ranks_end_when_the_launcher_is_killed(tmp_path):
    (tmp_path / "sleepy.py").write_text(RANK_SCRIPT)
    left = _kill_launcher_and_wait([sys.executable, "-m", "bigtrain.cli.main", "run",
                                    "--nproc-per-node", "2", "sleepy.py", str(tmp_path)],
                                   tmp_path)
    assert left == [], f"ranks {left} kept running after the launcher was killed"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("start", ["forkserver", "spawn"])
def test_fit_launched_ranks_end_when_the_launcher_is_killed(tmp_path, monkeypatch, start):
    # forkserver: the ranks' parent is the fork server, which outlives the launcher while a
    # rank lives; spawn: the launcher is their parent
    monkeypatch.setenv("BIGTRAIN_RANK_START", start)
    (tmp_path / "launch.py").write_text(FIT_LAUNCH_SCRIPT)
    left = _kill_launcher_and_wait([sys.executable, "launch.py", str(tmp_path)], tmp_path)
    assert left == [], f"ranks {left} kept running after the launcher was killed"


def test_a_plain_process_and_the_launcher_itself_follow_no_one(monkeypatch):
    from bigtrain.launch import parent_watch
    monkeypatch.delenv(parent_watch.LAUNCHER_PID_ENV, raising=False)
    assert parent_watch.follow_launcher() is None
    # a rank's child that inherited the variable while its launcher lives: not a rank
    monkeypatch.setenv(parent_watch.LAUNCHER_PID_ENV, str(os.getpid()))
    assert parent_watch.follow_launcher() is None
    assert parent_watch.LAUNCHER_PID_ENV not in os.environ  # consumed: children never see it


def test_a_rank_whose_launcher_died_while_it_started_stops_at_once(tmp_path):
    # the rank's launcher (a short-lived middle process here) is gone before `import bigtrain`
    rank = ("import time; time.sleep(1.0)\n"
            "import bigtrain\n"
            "open('still-running', 'w').write('yes')\n")
    middle = (f"import os, subprocess, sys\n"
              f"env = {{**os.environ, {LAUNCHER_PID_ENV!r}: str(os.getpid())}}\n"
              f"child = subprocess.Popen([sys.executable, '-c', {rank!r}], env=env)\n"
              f"print(child.pid, flush=True)\n")
    out = subprocess.run([sys.executable, "-c", middle], capture_output=True, text=True,
                         timeout=30, env=_env(), cwd=tmp_path)
    pid = int(out.stdout.split()[0])
    end = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < end:
        time.sleep(0.05)
    assert not _alive(pid)
    assert not (tmp_path / "still-running").exists(), "an orphaned rank went on running"
