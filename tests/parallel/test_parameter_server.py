"""Parameter server on gloo ranks: BSP parity, ASP/SSP convergence and bounds, sparse bytes,
a killed worker, a rejected push, checkpoint and resume.

Each rank drives the strategy with a tiny loop (validate -> setup -> setup_module ->
setup_optimizer -> serve | train_step...) the way the engine does.
"""
import contextlib
import copy
import json
import os
import threading
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.parallel.base import DistEnv, StepBatch
from bigtrain.parallel.parameter_server import ParameterServer
from tests.dist import run_ranks

N, NUM_IDS, FIELDS, DENSE = 192, 40, 2, 3


class _Tiny(nn.Module):
    """Embedding table + linear head: exercises both sparse rows and dense tensors."""

    def __init__(self, num_ids=NUM_IDS, dim=4):
        super().__init__()
        self.emb = nn.Embedding(num_ids, dim)
        self.fc = nn.Linear(FIELDS * dim + DENSE, 1)

    def forward(self, ids, dense):  # ids (B, F) int64, dense (B, D) -> (B, 1)
        return self.fc(torch.cat([self.emb(ids).flatten(1), dense], 1))


def _data(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, NUM_IDS, (N, FIELDS), generator=g)
    dense = torch.randn(N, DENSE, generator=g)
    truth = torch.randn(NUM_IDS, generator=g)
    y = truth[ids].sum(1, keepdim=True) + dense @ torch.tensor([[0.5], [-1.0], [0.3]])
    return ids, dense, y


def _loss(out, y, sw):
    return F.mse_loss(out, y)


def _sgd(params):  # scale-sensitive (unlike Adam): a wrong gradient average shows up
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def _start(rank, world_size, strategy, lr=0.05, make_optimizer=None):
    strategy.validate(world_size, 12)
    strategy.setup(DistEnv(rank=rank, world_size=world_size))
    torch.manual_seed(0)
    model = _Tiny()
    reference = copy.deepcopy(model)
    module = strategy.setup_module(model)
    opt = strategy.setup_optimizer(module, make_optimizer or (lambda ps: torch.optim.Adam(ps,
                                                                                      lr=lr)))
    return module, opt, reference


def _batch(strategy, step, global_batch, micro=2):
    """This worker's contiguous share of global batch `step`, split into micro-batches."""
    ids, dense, y = _data()
    index, count = strategy.data_shard()
    per = global_batch // count
    lo = (step * global_batch) % N + index * per
    cuts = [lo + per * j // micro for j in range(micro + 1)]
    parts = [((ids[a:b], dense[a:b]), y[a:b], None) for a, b in zip(cuts[:-1], cuts[1:])]
    return StepBatch(parts, [(b - a) / global_batch * count for a, b in zip(cuts, cuts[1:])])


def _train(strategy, module, opt, steps, global_batch, die_at=None):
    for step in range(steps):
        if die_at is not None and step == die_at:
            os._exit(3)  # a worker crash: no teardown, no goodbye
        strategy.train_step(module, opt, _batch(strategy, step, global_batch), _loss,
                            contextlib.nullcontext)


def _full_loss(state):
    model = _Tiny()
    model.load_state_dict(state)
    ids, dense, y = _data()
    with torch.no_grad():
        return F.mse_loss(model(ids, dense), y).item()


# ---- BSP parity -------------------------------------------------------------------------
def _bsp_parity(rank, world_size, steps, global_batch):
    strategy = ParameterServer(servers=2, mode="bsp")
    module, opt, reference = _start(rank, world_size, strategy, make_optimizer=_sgd)
    if strategy.is_service_rank():
        strategy.serve()
        return strategy.stats()
    _train(strategy, module, opt, steps, global_batch)
    ids, dense, y = _data()
    with torch.no_grad():  # a forward outside train_step (evaluate) pulls what it needs
        evaluated = module(ids, dense)
    state = strategy.full_state_dict(module)
    strategy.teardown()
    if rank != 0:
        return None
    ref_opt = _sgd(reference.parameters())
    for step in range(steps):  # single process, same global batches
        lo = (step * global_batch) % N
        sl = slice(lo, lo + global_batch)
        _loss(reference(ids[sl], dense[sl]), y[sl], None).backward()
        ref_opt.step()
        ref_opt.zero_grad()
    with torch.no_grad():
        eval_diff = (reference(ids, dense) - evaluated).abs().max().item()
    return max(eval_diff, *((state[k] - v).abs().max().item()
                            for k, v in reference.state_dict().items()))


def test_bsp_matches_single_process_training():
    results = run_ranks(_bsp_parity, 4, 5, 12, timeout=90)
    assert results[0] <= 1e-5
    assert results[2]["updates"] == 5 and results[3]["updates"] == 5  # one per clock


# ---- SSP with a straggler ---------------------------------------------------------------
def _ssp_straggler(rank, world_size, steps, staleness):
    strategy = ParameterServer(servers=1, mode="ssp", staleness=staleness,
                               straggler_delay_s={2: 0.06})
    module, opt, reference = _start(rank, world_size, strategy, lr=0.1)
    if strategy.is_service_rank():
        strategy.serve()
        return strategy.stats()
    initial = _full_loss(reference.state_dict())
    _train(strategy, module, opt, steps, 12)
    state = strategy.full_state_dict(module)
    strategy.teardown()
    return dict(strategy.stats(), initial=initial,
                final=_full_loss(state) if rank == 0 else None)


def test_ssp_bound_holds_with_a_slow_worker_and_loss_falls():
    steps, s = 25, 1
    *workers, server = run_ranks(_ssp_straggler, 4, steps, s, timeout=90)
    assert server["staleness_max"] <= s
    assert all(w["staleness_max"] <= s for w in workers)
    assert server["staleness_max"] == s  # fast workers did run ahead: not lock-step
    assert server["peak_concurrent_requests"] >= 3  # 2 waiting pulls + the straggler's push
    assert workers[0]["final"] < 0.3 * workers[0]["initial"]


# ---- ASP with a worker killed -----------------------------------------------------------
def _asp_kill(rank, world_size, out_dir, steps):
    strategy = ParameterServer(servers=1, mode="asp")
    module, opt, reference = _start(rank, world_size, strategy, lr=0.1)
    if strategy.is_service_rank():
        strategy.serve()
        store = strategy._store
        finite = all(bool(torch.isfinite(t).all()) for t in store.tensors)
        result = dict(strategy.stats(), finite=finite)
    else:
        initial = _full_loss(reference.state_dict())
        _train(strategy, module, opt, steps, 12, die_at=3 if rank == 2 else None)
        final = _full_loss(strategy.full_state_dict(module))
        strategy.teardown()
        result = dict(strategy.stats(), initial=initial, final=final)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    return result


def test_asp_survives_a_killed_worker_and_learns(tmp_path):
    with pytest.raises(RuntimeError) as err:  # run_ranks reports the dead rank, only it
        run_ranks(_asp_kill, 4, str(tmp_path), 30, timeout=90)
    assert "1 of 4 ranks failed" in str(err.value) and "rank 2 died" in str(err.value)
    got = {r: json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1, 3)}
    assert got[3]["dead_workers"] == [2] and got[3]["finite"]
    assert got[3]["updates"] == 2 * 30 + 3  # every push of the survivors, the dead one's 3
    for r in (0, 1):
        assert got[r]["pushes"] == 30
        assert got[r]["final"] < 0.3 * got[r]["initial"]


# ---- sparse bytes, rejected push, checkpoint + resume ------------------------------------
def _sparse_and_errors(rank, world_size, ckpt_dir, train):
    strategy = ParameterServer(servers=1, mode="bsp", checkpoint_dir=ckpt_dir,
                               checkpoint_every=1)
    module, opt, _ = _start(rank, world_size, strategy)
    if strategy.is_service_rank():
        strategy.serve()
        return strategy.stats()
    out = {}
    if train:
        for k, rows in enumerate(([1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12])):
            before = strategy.client.bytes_pushed
            ids = torch.tensor(rows).view(-1, 1).expand(-1, FIELDS)
            dense = torch.zeros(len(rows), DENSE)
            batch = StepBatch([((ids, dense), torch.ones(len(rows), 1), None)], [1.0])
            strategy.train_step(module, opt, batch, _loss, contextlib.nullcontext)
            out[f"push{k}"] = strategy.client.bytes_pushed - before
        out["rows_pulled"] = strategy.client.rows_pulled
        strategy.client.push({1: torch.zeros(3, 3)}, strategy.clock)  # fc.weight is (1, 11)
        strategy.clock += 1
        try:
            strategy.client.pull(strategy._params, strategy.clock)
        except ValueError as err:
            out["error"] = str(err)
        strategy.train_step(module, opt, batch, _loss, contextlib.nullcontext)  # still serves
        state = strategy.full_state_dict(module)
        state["fc.bias"] = torch.tensor([7.0])
        strategy.load_full_state_dict(module, state)  # set_weights: written to the server
    out["state"] = {k: v.tolist() for k, v in strategy.full_state_dict(module).items()}
    strategy.teardown()
    return out


def test_sparse_push_rejected_gradient_and_resume(tmp_path):
    worker, server = run_ranks(_sparse_and_errors, 2, str(tmp_path), True, timeout=60)
    row_bytes = 4 * 4 + 4  # 4 float32 values + one int32 row id
    assert worker["push1"] - worker["push0"] == (9 - 3) * row_bytes  # touched rows only
    assert worker["push0"] < NUM_IDS * 4 * 4  # far less than the table
    assert worker["rows_pulled"] == 3 + 9
    assert "fc.weight" in worker["error"] and "expected 11" in worker["error"]
    assert server["rejected_pushes"] == 1 and server["updates"] == 4
    assert worker["state"]["fc.bias"] == [7.0]
    with pytest.raises(RuntimeError, match="rank 1 died"):
        run_ranks(_resume_then_server_dies, 2, str(tmp_path), timeout=60)
    resumed = json.load(open(tmp_path / "resumed.json"))
    assert resumed["state"] == worker["state"]  # the server came back from its checkpoint
    assert "parameter server 0 (rank 1) stopped responding" in resumed["error"]
    assert "checkpoint_dir" in resumed["error"]


def _resume_then_server_dies(rank, world_size, ckpt_dir):
    strategy = ParameterServer(servers=1, mode="asp", checkpoint_dir=ckpt_dir)
    module, opt, _ = _start(rank, world_size, strategy)
    if strategy.is_service_rank():
        threading.Timer(1.0, os._exit, (4,)).start()  # the server crashes mid-training
        strategy.serve()
        return None
    out = {"state": {k: v.tolist() for k, v in strategy.full_state_dict(module).items()}}
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 20:
            strategy.train_step(module, opt, _batch(strategy, 0, 12), _loss,
                                contextlib.nullcontext)
    except RuntimeError as err:
        out["error"] = str(err)
    with open(os.path.join(ckpt_dir, "resumed.json"), "w") as f:
        json.dump(out, f)
    return out
