"""How a rank meets the job's store: it waits for rank 0's listener with short, growing
pauses (torch's store client alone retries only about 0.5 s later), and gives the wait up
after a limit, leaving the client's own retries and timeout to report a store that never
opens."""
from __future__ import annotations

import socket

from bigtrain.launch import join


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_wait_looks_again_after_1_ms_doubling_to_50_ms_and_stops_at_the_listener(
        monkeypatch):
    refusals, pauses = 9, []

    def connect(address, timeout):
        if len(pauses) < refusals:
            raise ConnectionRefusedError(address)
        return socket.socket()  # a closed socket stands for the accepted connection
    monkeypatch.setattr(join.socket, "create_connection", connect)
    monkeypatch.setattr(join.time, "sleep", pauses.append)
    join.await_listener("127.0.0.1", 1, limit_s=60)
    assert pauses == [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.05, 0.05, 0.05]


def test_a_real_listener_ends_the_wait_and_the_store_answers_after_it():
    from datetime import timedelta

    import torch.distributed as dist
    port = _free_port()
    server = dist.TCPStore("127.0.0.1", port, 2, is_master=True,
                           timeout=timedelta(seconds=10), wait_for_workers=False)
    join.await_listener("127.0.0.1", port)  # the probe connection is closed unused
    client = dist.TCPStore("127.0.0.1", port, 2, is_master=False,
                           timeout=timedelta(seconds=10))
    client.set("rank1", "here")
    assert server.get("rank1") == b"here"


def test_a_store_that_never_opens_ends_the_wait_at_the_limit_without_an_error(monkeypatch):
    pauses = []
    monkeypatch.setattr(join.time, "sleep", pauses.append)
    clock = iter(range(0, 1000, 1))  # one second per reading of the clock
    monkeypatch.setattr(join.time, "monotonic", lambda: float(next(clock)))
    join.await_listener("127.0.0.1", _free_port(), limit_s=3)
    assert 1 <= len(pauses) <= 3  # it gave up at the limit instead of waiting on
