"""Parameter server edges: an embedding table split over two servers, trained under BSP with
optimizers that keep state (momentum, Adam, Keras rules) while some steps look up rows of
one server only; rules a row split would change; options checked before any process starts.

The reference is one process training the same model on the same global batches.
"""
import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.api.optimizers import get_optimizer
from bigtrain.parallel.base import DistEnv, StepBatch
from bigtrain.parallel.parameter_server import ParameterServer, build_plan
from bigtrain.parallel.parameter_server import protocol as P
from bigtrain.parallel.parameter_server.store import ShardStore, steps_rows_alone
from tests.dist import run_ranks

ROWS, DIM, STEPS, BATCH = 20, 3, 4, 12
TOL = 1e-6

# update rules by name (module level: ranks look them up, lambdas do not pickle)
OPTIMIZERS = {
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    "adam": lambda ps: get_optimizer("adam", 0.05).build(ps),
    "adagrad": lambda ps: get_optimizer("adagrad", 0.5).build(ps),
    "lion": lambda ps: get_optimizer("lion", 0.01).build(ps),
    "ftrl": lambda ps: get_optimizer("ftrl", 0.5).build(ps),
    "lamb": lambda ps: get_optimizer("lamb", 0.05).build(ps),
}


class _Table(nn.Module):
    """A 20-row table (most of the bytes, so 2 servers split it by rows) and a linear head."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(ROWS, DIM)
        self.fc = nn.Linear(2 * DIM, 1)

    def forward(self, ids):  # ids (B, 2) int64 -> (B, 1)
        return self.fc(self.emb(ids).flatten(1))


def _data():
    """Ids of the table's first half, except in step 1, which also looks up the second half:
    in the other steps the server holding rows 10..19 receives no rows at all."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, ROWS // 2, (STEPS * BATCH, 2), generator=g)
    ids[BATCH:2 * BATCH, 0] += ROWS // 2
    return ids, torch.randn(STEPS * BATCH, 1, generator=g)


def _loss(out, y, sw):
    return F.mse_loss(out, y)


def _reference(model, make_optimizer):
    ids, y = _data()
    opt = make_optimizer(list(model.parameters()))
    for step in range(STEPS):
        sl = slice(step * BATCH, (step + 1) * BATCH)
        _loss(model(ids[sl]), y[sl], None).backward()
        opt.step()
        opt.zero_grad()
    return model.state_dict()


def _fit(rank, world_size, optimizer, servers):
    """One BSP run on these ranks; the chief returns the largest difference from one process."""
    strategy = ParameterServer(servers=servers, mode="bsp")
    strategy.validate(world_size, BATCH)
    strategy.setup(DistEnv(rank=rank, world_size=world_size))
    torch.manual_seed(0)
    model = _Table()
    reference = copy.deepcopy(model)
    module = strategy.setup_module(model)
    opt = strategy.setup_optimizer(module, OPTIMIZERS[optimizer])
    if strategy.is_service_rank():
        strategy.serve()
        return None
    ids, y = _data()
    index, count = strategy.data_shard()
    per = BATCH // count
    for step in range(STEPS):
        lo = step * BATCH + index * per
        part = [(ids[lo:lo + per], y[lo:lo + per], None)]
        strategy.train_step(module, opt, StepBatch(part, [1.0]), _loss, contextlib.nullcontext)
    state = strategy.full_state_dict(module)
    strategy.teardown()
    want = _reference(reference, OPTIMIZERS[optimizer])
    return max((state[k] - v).abs().max().item() for k, v in want.items())


def _fits(rank, world_size, runs):
    return [_fit(rank, world_size, optimizer, servers) for optimizer, servers in runs]


def test_split_table_with_stateful_optimizers_matches_one_process():
    # momentum and Adam move rows no batch looked up: the idle server's half must step too
    got = run_ranks(_fits, 4, [("sgd_momentum", 2), ("adam", 2)], timeout=90)[0]
    assert max(got) <= TOL, got


def test_keras_rules_train_embeddings_on_the_servers_like_one_process():
    # Keras's Adagrad derives from torch's but takes no sparse rows; Lamb's norms span the
    # whole table, so it runs where the table is not split (one server)
    runs = [("adagrad", 2), ("lion", 2), ("ftrl", 2), ("lamb", 1)]
    got = run_ranks(_fits, 4, runs, timeout=90)[0]
    assert max(got) <= TOL, dict(zip(runs, got))


def test_a_rule_that_a_row_split_changes_is_refused_naming_the_table():
    assert steps_rows_alone(OPTIMIZERS["adam"]) and steps_rows_alone(OPTIMIZERS["ftrl"])
    assert not steps_rows_alone(OPTIMIZERS["lamb"])
    strategy = ParameterServer(servers=2)
    strategy.plan = build_plan([("emb.weight", (ROWS, DIM), True), ("fc.bias", (1,), False)], 2)
    with pytest.raises(ValueError, match=r"splits \['emb.weight'\].*Lamb.*servers=1"):
        strategy.setup_optimizer(_Table(), OPTIMIZERS["lamb"])


def _push(store, rows, ids):
    """A push of table rows `ids` (values `rows`) and no dense gradient; ids None: the
    worker's step did not use the table."""
    n = [P.NO_GRAD, 0] if ids is None else [len(ids), len(ids) * DIM]
    index = torch.tensor([0] * len(store.pieces) + n + (ids or []), dtype=torch.int32)
    return store.decode_push(index, rows)


def test_a_table_steps_on_a_server_that_got_none_of_its_rows():
    plan = build_plan([("emb.weight", (ROWS, DIM), True), ("fc.bias", (1,), False)], 2)
    server = plan.param_pieces(0)[1].server  # holds rows 10..19
    store = ShardStore(plan, server, {"emb.weight": torch.zeros(ROWS, DIM),
                                      "fc.bias": torch.zeros(1)})
    store.build_optimizers(OPTIMIZERS["sgd_momentum"])
    pos = [p.param for p in store.pieces].index(0)
    store.apply(_push(store, torch.ones(DIM), [12]))
    after_rows = store.tensors[pos][2].clone()
    store.apply(_push(store, torch.empty(0), []))  # rows on the other server only
    assert torch.allclose(store.tensors[pos][2], after_rows * 1.9)  # momentum 0.9 moves it on
    before = store.tensors[pos].clone()
    store.apply(_push(store, torch.empty(0), None))  # no gradient: nothing steps
    assert torch.equal(store.tensors[pos], before)


def test_bad_timeouts_and_straggler_ranks_are_refused_before_starting():
    with pytest.raises(ValueError, match="comm_timeout_s must be a number of seconds > 0"):
        ParameterServer(comm_timeout_s=0)
    with pytest.raises(ValueError, match="seconds >= 0"):
        ParameterServer(straggler_delay_s={0: -1.0})
    strategy = ParameterServer(straggler_delay_s={7: 0.1})
    with pytest.raises(ValueError, match=r"ranks \[7\].*ranks 0..1"):
        strategy.validate(3, 8)
    ParameterServer(straggler_delay_s={1: 0.1}).validate(3, 8)  # a worker rank is fine
