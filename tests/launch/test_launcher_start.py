"""How fit(devices=N) starts its workers: forked from a preloaded fork server (or spawned),
each with the caller's environment, working folder and stdout/stderr of the moment it
starts, not those the fork server had when it started."""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

# no main guard, as users write; the first launch starts the fork server, the second runs
# after the script changed its environment and pointed its stdout/stderr at files
SCRIPT = textwrap.dedent("""
    import json, os, sys, types
    from bigtrain.launch.launcher import launch

    def probe(task, strategy, owner, env):
        print(f"rank {env.rank} to stdout", flush=True)
        print(f"rank {env.rank} to stderr", file=sys.stderr, flush=True)
        seen = {k: os.environ.get(k) for k in ("BT_LATE", "BT_CHANGED", "BT_REMOVED", "RANK",
                                               "WORLD_SIZE")}
        seen["cwd"] = os.path.basename(os.getcwd())
        return types.SimpleNamespace(state_dict={}, seen=seen)

    def go():
        return launch(types.SimpleNamespace(train=None, val=None), None, 2, model_owner=None,
                      run_fn=probe, timeout=60)

    os.environ.update(BT_CHANGED="before", BT_REMOVED="x")
    go()
    os.environ.update(BT_LATE="1", BT_CHANGED="after")
    del os.environ["BT_REMOVED"]
    os.mkdir("later")
    os.chdir("later")  # relative paths (checkpoint_dir="ckpt") must mean the same in a rank
    out, err = open(sys.argv[1], "w"), open(sys.argv[2], "w")
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    print("SEEN " + json.dumps(go().seen), flush=True)
""")


@pytest.mark.slow
@pytest.mark.parametrize("start", ["forkserver", "spawn"])
def test_workers_take_the_callers_environment_and_stdio_of_now(tmp_path, start):
    script, out, err = tmp_path / "probe.py", tmp_path / "out.txt", tmp_path / "err.txt"
    script.write_text(SCRIPT)
    env = {**os.environ, "BIGTRAIN_RANK_START": start}
    run = subprocess.run([sys.executable, str(script), str(out), str(err)], capture_output=True,
                         text=True, timeout=240, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    # the first launch printed to the script's stdout then; the second to the files
    ranks = lambda text: sorted(re.findall(r"rank \d to std(?:out|err)", text))  # noqa: E731 - two
    # ranks' lines may interleave
    assert ranks(run.stdout) == ["rank 0 to stdout", "rank 1 to stdout"]
    assert ranks(run.stderr) == ["rank 0 to stderr", "rank 1 to stderr"]
    assert ranks(out.read_text()) == ["rank 0 to stdout", "rank 1 to stdout"]
    assert ranks(err.read_text()) == ["rank 0 to stderr", "rank 1 to stderr"]
    seen = json.loads(re.search(r"SEEN (.*)", out.read_text()).group(1))
    # set, changed and removed after the fork server started; the launcher's own kept
    assert seen == {"BT_LATE": "1", "BT_CHANGED": "after", "BT_REMOVED": None, "RANK": "0",
                    "WORLD_SIZE": "2", "cwd": "later"}


def test_the_start_method_is_the_fork_server_unless_told_otherwise(monkeypatch):
    import multiprocessing

    from bigtrain.launch.launcher import default_start_method
    monkeypatch.delenv("BIGTRAIN_RANK_START", raising=False)
    has_server = "forkserver" in multiprocessing.get_all_start_methods()
    assert default_start_method() == ("forkserver" if has_server else "spawn")
    monkeypatch.setenv("BIGTRAIN_RANK_START", "spawn")
    assert default_start_method() == "spawn"
