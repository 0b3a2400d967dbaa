"""Process-group plumbing without processes: which store keys an attempt of a job sees."""
import torch.distributed as dist

from bigtrain.launch.join import attempt_store


def test_a_store_that_outlives_attempts_gets_one_prefix_per_attempt(monkeypatch):
    shared = dist.HashStore()  # the launcher's store, kept across restarts
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    attempt_store(shared).set("0/cpu/rank_1", "address of a rank that then died")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert not attempt_store(shared).check(["0/cpu/rank_1"])  # the restart starts clean


def test_a_fresh_store_per_attempt_is_used_as_is(monkeypatch):
    # bigtrain's default: rank 0 hosts a new store for every attempt, and a node started
    # again after it was lost counts restarts from 0, so the count must not name the keys
    fresh = dist.HashStore()
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    attempt_store(fresh).set("bigtrain/arrived/1", "host1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert attempt_store(fresh).check(["bigtrain/arrived/1"])


def test_devices_choose_where_ranks_compute(monkeypatch):
    import pytest
    import torch

    from bigtrain.launch import join as d
    monkeypatch.delenv(d.DEVICE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a host with 2 GPUs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert d.device_kind(None) == d.device_kind(2) == "cuda"
    assert str(d.device_for(3)) == "cuda:1"
    assert d.device_kind("cpu") == "cpu" and str(d.local_env("cpu").device) == "cpu"
    monkeypatch.setenv(d.DEVICE_ENV, "cpu")  # what fit(devices=..., "cpu") hands its ranks
    assert str(d.device_for(1)) == "cpu"
    assert d.resolve_devices("cpu") is None and d.resolve_devices("mps") is None
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no Apple GPU"):
        d.device_kind("mps")
    with pytest.raises(ValueError, match="'cpu', 'cuda' or 'mps'"):
        d.resolve_devices("tpu")
