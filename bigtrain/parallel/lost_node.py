"""One line instead of a traceback when a node is lost and the job will restart.

With `bigtrain run --max-restarts N` across hosts, the ranks on the surviving nodes fail when a
peer node goes away (gloo: "Connection reset by peer"), the elastic agent restarts them and
waits for the lost node in a new rendezvous round. torch shows this as each rank's full
traceback and the agent's "failed (exitcode: 1)", then silence, which reads as a crash. While
restarts remain bigtrain says instead:

    bigtrain: node 1 lost (Connection reset by peer, 10.0.0.2), waiting for it, restart 1 of 2

- `report_lost_node()` (in each rank): when the rank's training fails because a peer's
  connection broke and the agent has restarts left, the rank's uncaught-exception report
  becomes that line (printed by local rank 0); code that catches the exception still gets it.
- `quiet_restart_failures(max_restarts)` (in `bigtrain run`, the agent's process): drops the
  agent's "failed (exitcode ...)" log for failures that will be restarted; the last one, after
  which the job ends, is still logged.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys

_LOST = re.compile(r"Connection (?:reset|closed) by peer|Broken pipe")
_PEER = re.compile(r"\[([0-9A-Fa-f.:]+)\]:\d+")  # gloo names the peer as [ADDRESS]:PORT
_AGENT_LOGGER = "torch.distributed.elastic.multiprocessing.api"


def lost_node_line(message: str, environ) -> str | None:
    """The line for a rank that failed with `message`, or None when it is not a lost peer or
    no restart follows. `environ`: the rank's environment (set by torch's elastic agent)."""
    lost = _LOST.search(message)
    try:
        count = int(environ["TORCHELASTIC_RESTART_COUNT"])
        most = int(environ["TORCHELASTIC_MAX_RESTARTS"])
        nodes, node = int(environ["GROUP_WORLD_SIZE"]), int(environ["GROUP_RANK"])
    except (KeyError, ValueError):
        return None
    if lost is None or count >= most or nodes < 2:
        return None
    peer = _PEER.search(message)
    who = f"node {1 - node}" if nodes == 2 else "a node"
    cause = lost.group(0) + (f", {peer.group(1)}" if peer else "")
    return (f"bigtrain: {who} lost ({cause}), waiting for it, restart {count + 1} of {most}")


@contextlib.contextmanager
def report_lost_node(environ=os.environ):
    """Around a rank's training: see the module docstring."""
    try:
        yield
    except Exception as e:
        line = lost_node_line(str(e), environ)
        if line is not None:
            _report_uncaught_as(e, line, first=environ.get("LOCAL_RANK", "0") == "0")
        raise


def _report_uncaught_as(exc: BaseException, line: str, first: bool) -> None:
    """If `exc` ends the process uncaught, print `line` (on the first local rank) instead of
    its traceback; any other uncaught exception is reported as before."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        if value is not exc:
            previous(kind, value, tb)
        elif first:
            print(line, file=sys.stderr, flush=True)

    sys.excepthook = hook


class _RestartedFailures(logging.Filter):
    """Drops the agent's "failed (exitcode ...)" records for the first `max_restarts`
    failures (each is followed by a restart)."""

    def __init__(self, max_restarts: int):
        super().__init__()
        self.left = max_restarts

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("failed (exitcode") or self.left <= 0:
            return True
        self.left -= 1
        return False


def quiet_restart_failures(max_restarts: int) -> None:
    """In the agent's process (`bigtrain run`): see the module docstring."""
    if max_restarts > 0:
        logging.getLogger(_AGENT_LOGGER).addFilter(_RestartedFailures(max_restarts))
