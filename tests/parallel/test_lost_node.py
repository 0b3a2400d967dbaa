"""The one-line report of a lost node (bigtrain.parallel.lost_node), without processes."""
import logging
import subprocess
import sys
import textwrap

import pytest

from bigtrain.parallel.lost_node import _RestartedFailures, lost_node_line

GLOO = ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
        "[10.1.2.2]:48802: Connection reset by peer. This is typically caused by ...")
ENV = {"TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "2",
       "GROUP_WORLD_SIZE": "2", "GROUP_RANK": "0", "LOCAL_RANK": "0"}


def test_a_lost_peer_with_restarts_left_is_one_line():
    assert lost_node_line(GLOO, ENV) == ("bigtrain: node 1 lost (Connection reset by peer, "
                                         "10.1.2.2), waiting for it, restart 1 of 2")
    assert "restart 2 of 2" in lost_node_line(GLOO, {**ENV, "TORCHELASTIC_RESTART_COUNT": "1"})
    assert "a node lost" in lost_node_line(GLOO, {**ENV, "GROUP_WORLD_SIZE": "3"})


@pytest.mark.parametrize("message, env", [
    (GLOO, {**ENV, "TORCHELASTIC_RESTART_COUNT": "2"}),  # no restart left: the full error
    (GLOO, {**ENV, "TORCHELASTIC_MAX_RESTARTS": "0"}),
    (GLOO, {**ENV, "GROUP_WORLD_SIZE": "1"}),             # one host: no node to lose
    ("shape mismatch", ENV),                              # the rank's own bug
    (GLOO, {}),                                           # not under torch's elastic agent
])
def test_anything_else_keeps_its_traceback(message, env):
    assert lost_node_line(message, env) is None


def test_the_uncaught_exception_prints_the_line_instead_of_a_traceback():
    script = textwrap.dedent(f"""
        from bigtrain.parallel.lost_node import report_lost_node
        try:
            with report_lost_node({ENV!r}):
                raise RuntimeError("caught " + {GLOO!r})
        except RuntimeError:
            print("the caller still sees it")
        with report_lost_node({ENV!r}):
            raise RuntimeError({GLOO!r})
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1
    assert out.stdout == "the caller still sees it\n"
    assert out.stderr == ("bigtrain: node 1 lost (Connection reset by peer, 10.1.2.2), "
                          "waiting for it, restart 1 of 2\n")


def test_the_agent_drops_failure_logs_only_for_restarted_failures():
    keep = _RestartedFailures(max_restarts=2)
    record = logging.LogRecord("x", logging.ERROR, "f", 1, "failed (exitcode: %s)", (1,), None)
    other = logging.LogRecord("x", logging.ERROR, "f", 1, "something else", (), None)
    assert [keep.filter(record), keep.filter(other), keep.filter(record),
            keep.filter(record)] == [False, True, False, True]  # the last failure is shown
