"""A launched job's ranks leave together at exit (bigtrain.launch.join._destroy_group).

Rank 0's process hosts the job's store; when it ended while another rank still tore its
group down, a rank aborted ("terminate called without an active exception") after the
script's work was done (tests/launch/test_launch_edges.py's zero3 predict test, about one
run in three)."""
import sys
import threading

import torch.distributed as dist

from bigtrain.launch.join import _destroy_group


def test_rank_zero_leaves_only_after_the_other_ranks():
    store, order = dist.HashStore(), []

    def other_rank_leaves():
        order.append("rank 1 left")
        store.add("bigtrain/exit", 1)

    timer = threading.Timer(0.2, other_rank_leaves)
    timer.start()
    _destroy_group([store], rank=0, world=2)
    order.append("rank 0 left")
    timer.join()
    assert order == ["rank 1 left", "rank 0 left"]


def test_another_rank_says_it_left_and_goes():
    store = dist.HashStore()
    _destroy_group([store], rank=1, world=2)  # returns at once: nobody waits on rank 0
    assert store.add("bigtrain/exit", 0) == 1


def test_a_failed_script_leaves_at_once(monkeypatch):
    store = dist.HashStore()
    monkeypatch.setattr(sys, "last_value", RuntimeError("the script failed"), raising=False)
    _destroy_group([store], rank=0, world=2)  # the others may be gone: no wait
    assert store.add("bigtrain/exit", 0) == 0
