"""Parameter server logic that needs no processes: bad input, the shard plan, the store."""
import pytest
import torch
from torch import nn

from bigtrain.parallel.base import DistEnv, resolve_strategy
from bigtrain.parallel.parameter_server import ParameterServer, build_plan
from bigtrain.parallel.parameter_server.store import PushError, ShardStore


def test_unknown_mode_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'gossip'.*bsp, asp, ssp"):
        ParameterServer(mode="gossip")


def test_negative_staleness_is_refused():
    with pytest.raises(ValueError, match="staleness must be an integer >= 0"):
        ParameterServer(mode="ssp", staleness=-1)


@pytest.mark.parametrize("servers, world", [(1, 1), (2, 2), (3, 2)])
def test_servers_must_leave_room_for_a_worker(servers, world):
    with pytest.raises(ValueError, match=f"servers={servers}.*devices >= {servers + 1}"):
        ParameterServer(servers=servers).validate(world, 64)


def test_model_without_parameters_is_refused_before_any_communication():
    strategy = ParameterServer()
    strategy.env = DistEnv(rank=0, world_size=2)  # no process group: must fail before using one
    with pytest.raises(ValueError, match="ReLU has no parameters"):
        strategy.setup_module(nn.ReLU())


def test_registered_names_build_the_three_modes():
    assert resolve_strategy("ps") == ParameterServer(mode="bsp")
    assert resolve_strategy("ps_async") == ParameterServer(mode="asp")
    assert resolve_strategy("ps_ssp") == ParameterServer(mode="ssp", staleness=2)
    assert resolve_strategy("ps_bsp") == resolve_strategy("ps")
    assert resolve_strategy("ps_asp") == resolve_strategy("ps_async")
    assert ParameterServer(servers=2).num_processes(4) == 4


def test_plan_splits_a_big_table_by_rows_and_balances_bytes():
    params = [("emb.weight", (1000, 8), True), ("fc.weight", (4, 8), False), ("fc.bias", (4,),
                                                                                 False)]
    plan = build_plan(params, servers=3)
    table = plan.param_pieces(0)
    assert [(p.start, p.stop) for p in table] == [(0, 333), (333, 667), (667, 1000)]
    assert {p.server for p in table} == {0, 1, 2}
    loads = plan.server_bytes()
    assert sum(loads) == (8000 + 32 + 4) * 4
    assert max(loads) - min(loads) <= 34 * 8 * 4  # within one piece's worth
    ids = torch.tensor([0, 332, 333, 999])
    pos, pieces = plan.row_owner(0, ids)
    assert [pieces[i].start for i in pos.tolist()] == [0, 0, 333, 667]


def test_one_server_keeps_every_tensor_whole():
    plan = build_plan([("a", (10, 2), False), ("b", (), False)], servers=1)
    assert [(p.param, p.start, p.stop, p.server) for p in plan.pieces] == [(0, 0, 10, 0),
                                                                          (1, 0, 1, 0)]


def _store():
    plan = build_plan([("emb.weight", (6, 2), True), ("fc.weight", (1, 3), False)], servers=1)
    full = {"emb.weight": torch.zeros(6, 2), "fc.weight": torch.ones(1, 3)}
    store = ShardStore(plan, 0, full)
    store.build_optimizers(lambda ps: torch.optim.SGD(ps, lr=1.0))
    return store


def test_store_applies_sparse_rows_only_to_those_rows():
    store = _store()
    # index: [numel emb, numel fc] + [(rows, values) for emb] + [row ids]
    index = torch.tensor([0, 3, 2, 4, 1, 4], dtype=torch.int32)
    values = torch.tensor([1.0, 1.0, 1.0, 0.5, 0.5, 2.0, 2.0])
    store.apply(store.decode_push(index, values))
    assert store.tensors[0][1].tolist() == [-0.5, -0.5] and store.tensors[0][4].tolist() == [
        -2.0, -2.0]
    assert store.tensors[0][[0, 2, 3, 5]].abs().sum() == 0
    assert store.tensors[1].tolist() == [[0.0, 0.0, 0.0]]
    assert store.versions == [1, 1]


def test_store_rejects_a_wrong_shape_naming_the_tensor():
    store = _store()
    with pytest.raises(PushError, match="'fc.weight' has 2 elements, expected 3"):
        store.decode_push(torch.tensor([0, 2, 0, 0], dtype=torch.int32), torch.ones(2))
    with pytest.raises(PushError, match="row ids \\[9\\] of 'emb.weight'"):
        store.decode_push(torch.tensor([0, 0, 1, 2, 9], dtype=torch.int32), torch.ones(2))


def test_store_checkpoint_round_trip(tmp_path):
    store = _store()
    store.apply({1: torch.ones(1, 3)})
    store.updates = 1
    store.save(str(tmp_path / "s.pt"))
    other = _store()
    other.load(str(tmp_path / "s.pt"))
    assert other.tensors[1].tolist() == [[0.0, 0.0, 0.0]] and other.versions == [0, 1]
    assert other.updates == 1


def test_only_untied_embedding_tables_are_served_by_rows():
    from bigtrain.parallel.parameter_server.worker import row_tables as _row_tables

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight  # read whole by the head: must stay dense

    free = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 1))
    assert _row_tables(free) == {id(free[0].weight)}
    assert _row_tables(Tied()) == set()
