"""The rules that turn a README command into the runs the README test makes (no processes)."""
import sys

import pytest

from tests.readme import commands
from tests.readme.commands import TRAIN_PY, host_runs, resolve, split_block


def test_a_block_splits_into_commands_with_continuations_and_comments():
    block = ("make demo   # trains\n\nGLOO_SOCKET_IFNAME=eth0 bigtrain run --nnodes 2 \\\n"
             "  --node-rank 0 train.py      # host A\n")
    assert split_block(block) == [
        ["make", "demo"],
        ["GLOO_SOCKET_IFNAME=eth0", "bigtrain", "run", "--nnodes", "2", "--node-rank", "0",
         "train.py"]]


def test_resolve_takes_assignments_as_environment_and_shortens_examples():
    env, argv = resolve(["GLOO_SOCKET_IFNAME=eth0", "bigtrain", "run", "train.py"])
    assert env == {**commands.QUICK_ENV, "GLOO_SOCKET_IFNAME": "eth0"}
    assert argv == [sys.executable, "-m", "bigtrain.cli.main", "run", str(TRAIN_PY)]
    _, argv = resolve(["python", "examples/gpt_kjv.py", "--strategy", "tensor"])
    assert argv[1:] == ["examples/gpt_kjv.py", "--strategy", "tensor",
                        *commands.SHORTER["gpt_kjv.py"]]


def test_resolve_refuses_a_program_it_has_no_rule_for():
    with pytest.raises(AssertionError, match="no rule to run 'curl'"):
        resolve(["curl", "x"])


def test_two_hosts_become_two_loopback_runs_one_rank_each():
    env, argv = resolve(["GLOO_SOCKET_IFNAME=eth0", "bigtrain", "run", "--nnodes", "2",
                         "--node-rank", "0", "--nproc-per-node", "2", "--rdzv-endpoint",
                         "10.0.0.1:29400", "train.py"])
    runs = host_runs(env, argv)
    assert [a[a.index("--node-rank") + 1] for _, a in runs] == ["0", "1"]
    for run_env, run_argv in runs:
        assert run_env["GLOO_SOCKET_IFNAME"] == "lo"
        assert run_argv[run_argv.index("--nproc-per-node") + 1] == "1"
        endpoint = run_argv[run_argv.index("--rdzv-endpoint") + 1]
        assert endpoint.startswith("127.0.0.1:") and endpoint != "127.0.0.1:29400"
    assert runs[0][1][runs[0][1].index("--rdzv-endpoint") + 1] == \
        runs[1][1][runs[1][1].index("--rdzv-endpoint") + 1]  # one job


def test_output_check_needs_the_line_and_a_good_figure():
    commands.check_output("seed_example.py", "test loss 1.3 - test accuracy 0.6195 (chance")
    with pytest.raises(AssertionError, match="gave"):
        commands.check_output("seed_example.py", "test accuracy 0.1800")
    with pytest.raises(AssertionError, match="no line"):
        commands.check_output("gpt_kjv.py", "Traceback ...")
