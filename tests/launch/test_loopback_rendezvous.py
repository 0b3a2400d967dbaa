"""The one-host rendezvous ("bigtrain-loopback") that `fit(devices=N)` and `bigtrain run`
on one host use: torch's dynamic rendezvous on a loopback store, without the random sleep
torch takes before a node's first join when only one agent can join."""
from __future__ import annotations

import pytest
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dyn
from torch.distributed.elastic.rendezvous import rendezvous_handler_registry as registry

from bigtrain.launch.loopback import register_rendezvous


def _join_alone(max_nodes: int):
    """One agent joins a fresh rendezvous for up to `max_nodes` nodes; returns torch's
    RendezvousInfo."""
    params = RendezvousParameters(backend=register_rendezvous(), endpoint="127.0.0.1:0",
                                  run_id=f"test-{max_nodes}", min_nodes=1,
                                  max_nodes=max_nodes, local_addr="127.0.0.1",
                                  last_call_timeout=1, join_timeout=30)
    handler = registry.create_handler(params)
    try:
        return handler.next_rendezvous()
    finally:
        handler.shutdown()


@pytest.fixture
def delays(monkeypatch) -> list:
    asked: list = []
    monkeypatch.setattr(dyn, "_delay", lambda seconds: asked.append(seconds))  # never sleeps
    return asked


def test_one_agent_joins_without_the_random_start_sleep(delays):
    recorder = dyn._delay
    info = _join_alone(max_nodes=1)
    assert (info.rank, info.world_size) == (0, 1)
    assert not [d for d in delays if isinstance(d, tuple)], delays
    assert dyn._delay is recorder  # torch's function is put back after the join


def test_a_rendezvous_for_several_nodes_keeps_torchs_start_sleep(delays):
    info = _join_alone(max_nodes=2)  # completes alone after the 1 s last call
    assert (info.rank, info.world_size) == (0, 1)
    assert (0, 0.3) in delays
