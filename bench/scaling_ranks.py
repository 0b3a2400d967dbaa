"""The multi-rank parts of bench_scaling: model-state bytes per rank of zero1/2/3 on 1..4
ranks, and parameter-server throughput with 1..3 workers and 1 or 2 servers.

Not a bench script of its own (run_all runs `bench_*.py`); `bench_scaling.py` calls it.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

from bench.bench_parameter_server import REAL_BATCH, RepeatMLP, spawn
from bigtrain.parallel import resolve_strategy
from bigtrain.parallel.base import DistEnv, StepBatch
from bigtrain.parallel.parameter_server import ParameterServer
from bigtrain.plan import DeviceSpec, model_state_bytes, plan
from bigtrain.plan.device import CPU_COLLECTIVE_LATENCY, rank_peak_flops
from bigtrain.zoo.mlp import MLP
from tests.dist import run_ranks

ZERO_WIDTH, ZERO_LAYERS = 256, 8  # 8 equal Linear(256, 256): 526k parameters


def _local_bytes(t) -> int:
    """Bytes this rank holds of `t` (a DTensor's local shard)."""
    if t is None:
        return 0
    local = t.to_local() if isinstance(t, DTensor) else t
    return local.numel() * local.element_size()


def _state_bytes(rank, world, name):
    """(params, grads, optimizer) bytes held by this rank after one Adam step under `name`,
    before the gradients are freed."""
    torch.manual_seed(0)
    model = MLP(ZERO_WIDTH, [ZERO_WIDTH] * (ZERO_LAYERS - 1), ZERO_WIDTH)
    strategy = resolve_strategy(name)
    strategy.setup(DistEnv(rank=rank, world_size=world))
    module = strategy.setup_module(model)
    opt = strategy.setup_optimizer(module, lambda ps: torch.optim.Adam(ps, lr=1e-3))
    x = torch.randn(8, ZERO_WIDTH)
    F.mse_loss(module(x), x).backward()
    opt.step()
    local_opt = getattr(opt, "optim", opt)  # ZeroRedundancyOptimizer: its local shard's
    params = list(module.parameters())
    out = (sum(_local_bytes(p) for p in params), sum(_local_bytes(p.grad) for p in params),
           sum(_local_bytes(v) for s in local_opt.state.values() for v in s.values()
               if isinstance(v, torch.Tensor)))
    strategy.teardown()
    return out


def _states_bytes(rank, world, names):
    """`_state_bytes` of each strategy in `names`, one after another in this rank."""
    return [_state_bytes(rank, world, name) for name in names]


def bench_zero() -> list[dict]:
    """Heaviest rank's model-state bytes vs the ZeRO formula, zero1/2/3 on 1..4 ranks."""
    probe = MLP(ZERO_WIDTH, [ZERO_WIDTH] * (ZERO_LAYERS - 1), ZERO_WIDTH)
    psi = sum(p.numel() for p in probe.parameters())
    largest = max(p.numel() for p in probe.parameters())
    print(f"\nmodel-state bytes per rank: MLP {ZERO_LAYERS} x Linear({ZERO_WIDTH}), "
          f"{psi:,} parameters, fp32 Adam (16 bytes per parameter unsharded); heaviest rank "
          "after one step, gradients still held")
    print(f"  {'strategy':<8} {'ranks':>5} {'params MB':>10} {'grads MB':>9} {'optim MB':>9} "
          f"{'total MB':>9} {'formula MB':>10} {'err':>6}")
    names = ("zero1", "zero2", "zero3")
    # one launch per rank count, every strategy in turn inside it (a launch costs seconds)
    launched = {n: run_ranks(_states_bytes, n, names, timeout=300) for n in (1, 2, 3, 4)}
    rows = []
    for i, name in enumerate(names):
        for n in (1, 2, 3, 4):
            heavy = max((r[i] for r in launched[n]), key=sum)
            want = model_state_bytes(name, psi, world_size=n, optimizer="adam",
                                     largest_param=largest).model_states
            rows.append({"strategy": name, "ranks": n, "measured": sum(heavy),
                         "parts": heavy, "formula": want})
            print(f"  {name:<8} {n:>5} {heavy[0] / 1e6:>10.3f} {heavy[1] / 1e6:>9.3f} "
                  f"{heavy[2] / 1e6:>9.3f} {sum(heavy) / 1e6:>9.3f} {want / 1e6:>10.3f} "
                  f"{sum(heavy) / want - 1:>+6.1%}", flush=True)
    worst = max(abs(r["measured"] / r["formula"] - 1) for r in rows)
    print(f"  largest error against the formula: {worst:.1%} (target <= 10 %)")
    return rows


def _ps_worker(rank, world, servers, repeats, seconds):
    """Samples/s of one equal worker under BSP for `seconds` (a server returns None)."""
    strategy = ParameterServer(servers=servers, mode="bsp")
    torch.manual_seed(0)
    strategy.setup(DistEnv(rank=rank, world_size=world))
    module = strategy.setup_module(RepeatMLP(repeats))
    opt = strategy.setup_optimizer(module, lambda ps: torch.optim.Adam(ps, lr=1e-3))
    if strategy.is_service_rank():
        strategy.serve()
        return None
    x, y = torch.randn(REAL_BATCH, 64), torch.randn(REAL_BATCH, 1)
    batch = StepBatch([(x, y, None)], [1.0])
    mse = lambda out, t, sw: F.mse_loss(out, t)  # noqa: E731
    for _ in range(3):  # untimed: ranks start seconds apart
        strategy.train_step(module, opt, batch, mse, contextlib.nullcontext)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        strategy.train_step(module, opt, batch, mse, contextlib.nullcontext)
        steps += 1
    rate = steps * REAL_BATCH / (time.perf_counter() - t0)
    strategy.teardown()
    return rate


def ps_prediction(repeats: int, workers: int, servers: int, host: DeviceSpec) -> float:
    """The planner's samples/s for `workers` BSP workers (its "ps" estimate: one server;
    every rank's FLOP/s is its share of this host's cores)."""
    world = workers + servers
    spec = DeviceSpec("cpu", 1e9, rank_peak_flops(host.flops, 1, world, os.cpu_count()),
                      host.bandwidth, memory_bandwidth=host.memory_bandwidth,
                      latency=CPU_COLLECTIVE_LATENCY)
    est = plan(RepeatMLP(repeats), devices=workers + 1, batch_size=workers * REAL_BATCH,
               device=spec, example_input=torch.zeros(1, 64)).get("ps")
    return workers * REAL_BATCH / est.time.total


def calibrate_cpu(step_ms: float) -> tuple[int, float]:
    """Repeats of RepeatMLP's hidden layer for about `step_ms` of forward + backward on one
    thread, by CPU time (best of 10: other programs' load does not shorten the count);
    returns (repeats, ms per repeat)."""
    torch.set_num_threads(1)
    model, x = RepeatMLP(repeats=8), torch.randn(REAL_BATCH, 64)
    best = float("inf")
    for _ in range(10):
        c0 = time.process_time()
        model(x).square().mean().backward()
        best = min(best, time.process_time() - c0)
    per_repeat_ms = best * 1000 / 8
    return max(1, round(step_ms / per_repeat_ms)), per_repeat_ms


def bench_ps(seconds: float = 2.0, rounds: int = 2, step_ms: float = 30.0) -> list[dict]:
    """BSP throughput of 1..3 equal workers with 1 and 2 servers, real compute; runs rotate
    inside each round; medians over rounds, beside the planner's prediction."""
    repeats, per_ms = calibrate_cpu(step_ms)
    from bench.bench_scaling import host_spec
    host = host_spec()
    print(f"\nparameter server, BSP, equal workers: MLP 64-{RepeatMLP.WIDTH}x{repeats}-1 at "
          f"batch {REAL_BATCH} ({repeats * per_ms:.0f} ms forward+backward CPU time alone), 1 torch "
          f"thread per rank on {os.cpu_count()} cores, {rounds} rounds of {seconds:.0f} s")
    runs = [(w, s) for s in (1, 2) for w in (1, 2, 3)]
    rates: dict[tuple, list[float]] = {r: [] for r in runs}
    for r in range(rounds):
        for w, s in runs[r % len(runs):] + runs[:r % len(runs)]:
            out = spawn(_ps_worker, w + s, s, repeats, seconds)
            rates[w, s].append(sum(v for v in out if v is not None))
    print(f"  {'workers':>7} {'servers':>7} {'ranks':>5} {'samples/s':>10} {'vs 1 worker':>11} "
          f"{'plan':>8} {'err':>6}")
    rows = []
    for w, s in runs:
        med = statistics.median(rates[w, s])
        pred = ps_prediction(repeats, w, s, host)
        base = statistics.median(rates[1, s])
        rows.append({"workers": w, "servers": s, "rate": med, "plan": pred,
                     "rates": rates[w, s]})
        print(f"  {w:>7} {s:>7} {w + s:>5} {med:>10,.0f} {med / base:>10.2f}x {pred:>8,.0f} "
              f"{pred / med - 1:>+6.0%}", flush=True)
    return rows
