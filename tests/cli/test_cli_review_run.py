"""`bigtrain run` as a new user meets it: a missing script, a script with its own flags, a rank
that fails, an unknown flag and Ctrl-C each end at once with a clear message and the right
exit code, and leave no rank behind."""
import os
import signal
import subprocess
import sys
import time

import pytest

from bigtrain.cli.run_args import script_at

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


#: variables that would make `bigtrain run` one rank of an outer job (see bigtrain run --help)
_JOB_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_",
                  "OMPI_COMM_WORLD_", "PMI_", "TORCHELASTIC_")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_JOB_VARIABLES)}
    return {**env, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}


def _bigtrain_run(tmp_path, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "bigtrain.cli.main", "run", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
                          env=_env())


def test_a_missing_script_fails_before_any_rank_starts(tmp_path):
    out = _bigtrain_run(tmp_path, "--nproc-per-node", "2", "missing.py")
    assert out.returncode == 1
    assert "bigtrain run: no such script: missing.py" in out.stderr
    assert "Traceback" not in out.stderr and "FAILED" not in out.stderr  # no rank started


def test_a_script_that_does_not_compile_fails_once_before_any_rank_starts(tmp_path):
    (tmp_path / "broken.py").write_text("x = 1\ndef f(:\n    pass\n")
    out = _bigtrain_run(tmp_path, "--nproc-per-node", "2", "broken.py")
    assert out.returncode == 1
    assert "bigtrain run: broken.py does not compile, line 2" in out.stderr
    assert "def f(:" in out.stderr
    assert "FAILED" not in out.stderr  # no rank started, so no launcher failure report


def test_the_scripts_own_flags_reach_it_even_when_they_abbreviate_torchruns(tmp_path):
    # --nproc is a prefix of torchrun's --nproc-per-node: torchrun's parser called it ambiguous
    (tmp_path / "args.py").write_text(
        "import argparse, os\n"
        "p = argparse.ArgumentParser()\n"
        "p.add_argument('--lr', type=float)\n"
        "p.add_argument('--nproc', type=int)\n"
        "a = p.parse_args()\n"
        "os.write(1, f\"rank {os.environ['RANK']} lr {a.lr} nproc {a.nproc}\\n\".encode())\n")
    out = _bigtrain_run(tmp_path, "--nproc-per-node", "2", "args.py", "--lr", "0.1",
                        "--nproc", "3")
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(line for line in out.stdout.splitlines() if line.startswith("rank")) == [
        "rank 0 lr 0.1 nproc 3", "rank 1 lr 0.1 nproc 3"]


def test_a_rank_that_raises_gives_exit_code_1_and_its_error_without_a_launcher_traceback(
        tmp_path):
    (tmp_path / "boom.py").write_text(
        "import os\n"
        "if os.environ['RANK'] == '1':\n"
        "    raise ValueError('boom on rank 1')\n")
    out = _bigtrain_run(tmp_path, "--nproc-per-node", "2", "boom.py")
    assert out.returncode == 1
    assert "ValueError: boom on rank 1" in out.stderr  # the rank's own traceback
    assert "rank      : 1" in out.stderr  # torch's report names the failed rank
    assert os.path.join("bigtrain", "cli", "main.py") not in out.stderr  # not the launcher's


def test_ctrl_c_stops_every_rank_and_exits_130(tmp_path):
    (tmp_path / "sleepy.py").write_text(
        "import os, time\n"
        "os.write(1, f'started {os.getpid()}\\n'.encode())\n"  # one write: ranks run python -u
        "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-m", "bigtrain.cli.main", "run",
                             "--nproc-per-node", "2", "sleepy.py"], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        pids = []
        while len(pids) < 2:  # both ranks run
            line = proc.stdout.readline()
            if not line:  # ended before its ranks started
                raise AssertionError(proc.communicate(timeout=20)[1][-3000:])
            if line.startswith("started"):
                pids.append(int(line.split()[1]))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 130, err[-2000:]
        assert "stopped by SIGINT" in err
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in pids if _alive(p)], "ranks left running after Ctrl-C"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("argv, at", [
    (["--nproc-per-node", "2", "t.py", "--nproc", "3"], 2),
    (["--nproc-per-node=2", "--standalone", "t.py"], 2),
    (["--nproc-per", "2", "-m", "pkg.train", "--x"], 3),  # a unique prefix, as argparse allows
    (["--nproc-per-node", "2", "--", "t.py"], 3),
    (["--nproc-per-node", "2"], 2),
])
def test_the_script_is_found_after_torchruns_flags(argv, at):
    assert script_at(argv) == at


def test_an_unknown_flag_before_the_script_is_named_not_taken_for_the_script(capsys):
    with pytest.raises(SystemExit) as e:
        script_at(["--nproc-per-node", "2", "--bogus", "3", "t.py"])
    assert e.value.code == 2
    assert "unrecognized argument: --bogus" in capsys.readouterr().err
