"""join_existing_job(timeout_s=T) with no store to reach gives up within T: before, torch's
store client waited out T after bigtrain's own 2 s wait for the listener, slept 2-4 s and
tried once more, so a 4 s timeout failed after 8-10 s with a message saying "within 4 s".

The first test runs the join on a simulated clock: a refused connection costs nothing, a
sleep its length, and a store client started against a closed port what torch's costs (its
timeout plus a 3 s retry delay). The second starts a real listener while a rank waits.
"""
from __future__ import annotations

import socket
import threading
from datetime import timedelta

import pytest
import torch.distributed as dist

from bigtrain.launch import join


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank1_of_2(monkeypatch, port: int) -> None:
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    for key in ("TORCHELASTIC_USE_AGENT_STORE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)


@pytest.mark.parametrize("timeout_s", [4.0, 30.0])
def test_a_rank_without_rank_0_gives_up_at_the_join_timeout(monkeypatch, timeout_s):
    _rank1_of_2(monkeypatch, _free_port())
    now = [1000.0]

    def refused(address, timeout=None):
        raise ConnectionRefusedError(address)

    def client(host, port, world, is_master=False, timeout=timedelta(seconds=300), **kw):
        now[0] += timeout.total_seconds() + 3.0  # torch's client: timeout, retry delay
        raise dist.DistNetworkError(f"timed out connecting to {host}:{port}")

    monkeypatch.setattr(join.socket, "create_connection", refused)
    monkeypatch.setattr(join.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(join.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    monkeypatch.setattr(join.dist, "TCPStore", client)
    start = now[0]
    with pytest.raises(RuntimeError, match=f"within {timeout_s:g} s: rank 0, which hosts it"):
        join.join_existing_job(timeout_s=timeout_s, set_threads=False, kind="cpu")
    spent = now[0] - start
    assert timeout_s - 0.1 <= spent <= timeout_s + 1.0, spent  # waited for it, then no longer


def test_a_store_that_opens_while_a_rank_waits_is_joined(monkeypatch):
    port = _free_port()
    _rank1_of_2(monkeypatch, port)
    servers = []
    opener = threading.Timer(0.3, lambda: servers.append(dist.TCPStore(
        "127.0.0.1", port, 2, is_master=True, timeout=timedelta(seconds=10),
        wait_for_workers=False)))
    opener.start()
    try:
        client = join.rendezvous_store(1, 2, 10.0)
        client.set("rank1", "here")
        assert servers[0].get("rank1") == b"here"
    finally:
        opener.join()
