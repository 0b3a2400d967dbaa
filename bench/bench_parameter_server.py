"""Parameter-server figures on local gloo ranks (CPU).

    python bench/bench_parameter_server.py            # all of them
    python bench/bench_parameter_server.py --only real --servers 1 2  # 1 and 2 servers
    python bench/bench_parameter_server.py --only latency
    python bench/bench_parameter_server.py --quick    # shorter runs, smaller table

1. throughput: samples/s of 3 workers + 1 server under BSP, ASP and SSP(2) when one worker
   is 3x slower (every worker sleeps `--step-ms` per step to stand for compute, the slow
   one 3x that), each run for `--seconds` of wall clock.
   real: the same with real compute instead of sleeps: each worker runs forward/backward of
   an MLP whose hidden layer repeats enough times for about `--step-ms` per step (calibrated
   here first), the slow worker 3x the repeats; `--servers 1 2` also runs 2 servers. Every
   rank gets cores/ranks torch threads (at least 1): on a small machine the ranks share the
   CPU, so ASP's gain is capped by the cores as well as by the straggler.
2. bytes: bytes pushed per step for Wide & Deep with a 1M-row table: sparse rows vs a dense
   push of every parameter, and vs the bytes of the touched rows plus the dense layers.
3. latency: one pull + one push of a 1M-parameter MLP (median over `--iters`).

With a straggler that stays slow, SSP's long-run throughput is BSP's (the fast workers get
`staleness` steps ahead, then wait); SSP pays off when slowness comes and goes. ASP does
not wait at all.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bigtrain.data.ctr import CTRConfig, make_ctr  # noqa: E402
from bigtrain.parallel.base import DistEnv, StepBatch  # noqa: E402
from bigtrain.parallel.parameter_server import ParameterServer  # noqa: E402
from bigtrain.zoo.wide_and_deep import WideAndDeep  # noqa: E402
from tests.dist import run_ranks  # noqa: E402


def rank_threads(world: int) -> int:
    """Torch threads per rank: the cores shared out among the ranks (at least 1)."""
    return max(1, (os.cpu_count() or 1) // world)


def spawn(fn, world: int, *args) -> list:
    """Run fn(rank, world, *args) on `world` gloo ranks (the tests' `run_ranks`: ranks forked
    from a preloaded fork server, `rank_threads(world)` torch threads each); results in rank
    order."""
    return run_ranks(fn, world, *args, timeout=600.0, pg_timeout=120.0)


def _start(rank, world, strategy, model, lr=1e-3, opt=torch.optim.Adam):
    strategy.setup(DistEnv(rank=rank, world_size=world))
    module = strategy.setup_module(model)
    return module, strategy.setup_optimizer(module, lambda ps: opt(ps, lr=lr))


def _mse(out, y, sw):
    return F.mse_loss(out, y)


# ---- 1. throughput with a straggler -----------------------------------------------------
def _throughput(rank, world, mode, staleness, step_ms, seconds, batch):
    delays = {w: step_ms / 1000 * (3 if w == world - 2 else 1) for w in range(world - 1)}
    strategy = ParameterServer(servers=1, mode=mode, staleness=staleness,
                               straggler_delay_s=delays)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 1))
    module, opt = _start(rank, world, strategy, model)
    if strategy.is_service_rank():
        strategy.serve()
        return strategy.stats()
    x, y = torch.randn(batch, 64), torch.randn(batch, 1)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        strategy.train_step(module, opt, StepBatch([(x, y, None)], [1.0]), _mse,
                            contextlib.nullcontext)
        steps += 1
    elapsed = time.perf_counter() - t0
    strategy.teardown()
    return steps * batch / elapsed


class RepeatMLP(nn.Module):
    """Input(64) -> Dense(WIDTH, tanh) -> [Dense(WIDTH, tanh)] x `repeats` -> Dense(1): the
    hidden layer applied `repeats` times with shared weights, so a worker's compute per step
    scales with `repeats` while every worker holds the same parameters (the slow worker sets
    3x the repeats)."""

    WIDTH = 256

    def __init__(self, repeats: int = 1):
        super().__init__()
        self.inp, self.hidden = nn.Linear(64, self.WIDTH), nn.Linear(self.WIDTH, self.WIDTH)
        self.out, self.repeats = nn.Linear(self.WIDTH, 1), repeats

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        for _ in range(self.repeats):
            h = torch.tanh(self.hidden(h))
        return self.out(h)


REAL_BATCH = 512  # samples per step in real mode: compute-heavy, 82k parameters to push
WARMUP_STEPS = 3


def calibrate_repeats(step_ms: float, threads: int) -> tuple[int, float]:
    """Repeats of the hidden layer whose forward + backward take about `step_ms` on one rank's
    threads here (best of 10 in this process, no rank running: the least disturbed figure);
    returns (repeats, ms per repeat)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    model, x = RepeatMLP(repeats=8), torch.randn(REAL_BATCH, 64)
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        model(x).square().mean().backward()
        times.append(time.perf_counter() - t0)
    torch.set_num_threads(old)
    per_repeat_ms = min(times) * 1000 / 8
    return max(1, round(step_ms / per_repeat_ms)), per_repeat_ms


def _throughput_real(rank, world, mode, staleness, servers, repeats, seconds):
    """Like `_throughput`, but every worker computes: `repeats` hidden layers per step, the
    slow worker (the last one) 3x that; no sleeps."""
    strategy = ParameterServer(servers=servers, mode=mode, staleness=staleness)
    workers = world - servers
    torch.manual_seed(0)
    model = RepeatMLP(repeats * (3 if rank == workers - 1 else 1))
    module, opt = _start(rank, world, strategy, model)
    if strategy.is_service_rank():
        strategy.serve()
        return strategy.stats()
    x, y = torch.randn(REAL_BATCH, 64), torch.randn(REAL_BATCH, 1)
    batch = StepBatch([(x, y, None)], [1.0])
    for _ in range(WARMUP_STEPS):  # untimed: ranks start seconds apart; BSP lines them up
        strategy.train_step(module, opt, batch, _mse, contextlib.nullcontext)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        strategy.train_step(module, opt, batch, _mse, contextlib.nullcontext)
        steps += 1
    elapsed = time.perf_counter() - t0
    strategy.teardown()
    return steps * REAL_BATCH / elapsed


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x (range {min(values):.2f}..{max(values):.2f})"


def bench_throughput_real(args) -> None:
    """BSP/ASP/SSP(2) with real compute, 3 workers (one doing 3x the work) + 1 or 2 servers.

    One calibration for all runs; every round runs each (servers, mode) once in a rotated
    order, so a noisy neighbour hits all of them alike; ratios are taken within a round."""
    worlds = [3 + s for s in args.servers]
    threads = {w: rank_threads(w) for w in worlds}
    repeats, per_ms = calibrate_repeats(args.step_ms, threads[worlds[0]])
    print(f"real compute: 3 workers + {' or '.join(map(str, args.servers))} server(s), "
          f"{'/'.join(str(threads[w]) for w in worlds)} torch thread(s) per rank on "
          f"{os.cpu_count()} cores (the ranks share the CPU); MLP 64-{RepeatMLP.WIDTH}"
          f"x{repeats}-1 at batch {REAL_BATCH}: {repeats * per_ms:.0f} ms forward+backward alone "
          f"(best of 10), the slow worker 3x the repeats; {args.rounds} rounds of "
          f"{args.seconds:.0f} s per run", flush=True)
    modes = (("BSP", "bsp", 0), ("ASP", "asp", 0), ("SSP(2)", "ssp", 2))
    runs = [(servers, m) for servers in args.servers for m in modes]
    rates: dict[tuple, list[float]] = {(s, m[0]): [] for s, m in runs}
    for r in range(args.rounds):
        for servers, (label, mode, st) in runs[r % len(runs):] + runs[:r % len(runs)]:
            out = spawn(_throughput_real, 3 + servers, mode, st, servers, repeats, args.seconds)
            rates[servers, label].append(sum(out[:3]))
            print(f"  round {r + 1}, {servers} server(s), {label:7s} {sum(out[:3]):8.0f} "
                  f"samples/s (per worker {', '.join(f'{w:.0f}' for w in out[:3])}; staleness "
                  f"max {out[-1]['staleness_max']})", flush=True)
    for servers in args.servers:
        med = {label: statistics.median(rates[servers, label]) for label, _, _ in modes}
        bsp = rates[servers, "BSP"]
        print(f"real compute, {servers} server(s): BSP {med['BSP']:.0f}, ASP {med['ASP']:.0f}, "
              f"SSP(2) {med['SSP(2)']:.0f} samples/s (medians); ASP / BSP "
              f"{_spread([a / b for a, b in zip(rates[servers, 'ASP'], bsp)])}, SSP(2) / BSP "
              f"{_spread([a / b for a, b in zip(rates[servers, 'SSP(2)'], bsp)])}", flush=True)
    if len(args.servers) == 2:
        one, two = args.servers
        for label, _, _ in modes:
            print(f"real compute, {label}: {two} / {one} servers "
                  f"{_spread([b / a for a, b in zip(rates[one, label], rates[two, label])])}")


def bench_throughput(args) -> None:
    rates = {}
    for label, mode, s in (("BSP", "bsp", 0), ("ASP", "asp", 0), ("SSP(2)", "ssp", 2)):
        *workers, server = spawn(_throughput, 4, mode, s, args.step_ms, args.seconds, 64)
        rates[label] = sum(workers)
        print(f"throughput {label:7s} {rates[label]:8.0f} samples/s  (per worker "
              f"{', '.join(f'{w:.0f}' for w in workers)}; staleness max "
              f"{server['staleness_max']}, mean {server['staleness_mean']:.2f})", flush=True)
    print(f"ASP / BSP = {rates['ASP'] / rates['BSP']:.2f}x, SSP(2) / BSP = "
          f"{rates['SSP(2)'] / rates['BSP']:.2f}x", flush=True)


# ---- 2. sparse vs dense bytes -----------------------------------------------------------
def _bytes(rank, world, num_ids, steps, batch):
    strategy = ParameterServer(servers=1, mode="asp")
    torch.manual_seed(0)
    model = WideAndDeep(num_ids, num_fields=8, num_dense=4)
    module, opt = _start(rank, world, strategy, model, lr=0.05, opt=torch.optim.Adagrad)
    if strategy.is_service_rank():
        strategy.serve()
        return None
    data = make_ctr(CTRConfig(num_samples=steps * batch, num_ids=num_ids))
    table = module.embedding.weight
    dense_bytes = sum(p.numel() for p in module.parameters() if p is not table) * 4
    row_bytes = table.shape[1] * 4
    touched, sent = [], []
    for step in range(steps):
        sl = slice(step * batch, (step + 1) * batch)
        before = strategy.client.bytes_pushed
        micro = [((data.ids[sl], data.dense[sl]), data.clicks[sl], None)]
        strategy.train_step(module, opt, StepBatch(micro, [1.0]),
                            lambda o, t, w: F.binary_cross_entropy_with_logits(o, t),
                            contextlib.nullcontext)
        sent.append(strategy.client.bytes_pushed - before)
        touched.append(data.ids[sl].unique().numel())
    strategy.teardown()
    all_bytes = sum(p.numel() for p in module.parameters()) * 4
    return statistics.mean(sent), statistics.mean(touched), row_bytes, dense_bytes, all_bytes


def bench_bytes(args) -> None:
    sent, rows, row_bytes, dense_bytes, all_bytes = spawn(_bytes, 2, args.ids, 20, 512)[0]
    needed = rows * row_bytes + dense_bytes
    print(f"bytes/step WideAndDeep({args.ids} ids x 17), batch 512: sparse push "
          f"{sent / 1e3:.1f} kB, dense push would be {all_bytes / 1e6:.1f} MB "
          f"({all_bytes / sent:.0f}x more)", flush=True)
    print(f"  touched rows {rows:.0f}/step: rows + dense layers = {needed / 1e3:.1f} kB; "
          f"sparse / touched = {sent / needed:.3f} (ids and headers are the rest; "
          f"with 4-byte ids counted: {sent / (needed + 4 * rows):.3f})", flush=True)


# ---- 3. push + pull latency -------------------------------------------------------------
def _latency(rank, world, mode, iters):
    strategy = ParameterServer(servers=1, mode=mode)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1000, 999), nn.Linear(999, 1))  # 1,000,999 parameters
    module, opt = _start(rank, world, strategy, model)
    if strategy.is_service_rank():
        strategy.serve()
        return None
    params = strategy._params
    grads = {k: torch.randn_like(p) * 1e-3 for k, p in enumerate(params)}
    times = []
    for i in range(iters):
        t0 = time.perf_counter()
        strategy.client.pull(params, strategy.clock)
        strategy.client.push(grads, strategy.clock)
        strategy.clock += 1
        times.append(time.perf_counter() - t0)
    strategy.client.pull(params, strategy.clock)  # BSP: waits for the last update
    strategy.teardown()
    return statistics.median(times[2:]) * 1e3, sum(p.numel() for p in params)


def bench_latency(args) -> None:
    for mode in ("asp", "bsp"):
        ms, n = spawn(_latency, 2, mode, args.iters)[0]
        note = ("pull returns before the push is applied" if mode == "asp"
                else "pull waits for the previous push's Adam update")
        print(f"latency {mode}: pull + push of {n:,} params = {ms:.1f} ms median ({note})",
              flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["throughput", "real", "bytes", "latency"])
    p.add_argument("--servers", type=int, nargs="+", default=[1],
                   help="server counts for the real-compute throughput")
    p.add_argument("--rounds", type=int, default=2, help="rounds of the real-compute runs")
    p.add_argument("--step-ms", type=float, default=30.0)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--ids", type=int, default=1_000_000)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--quick", action="store_true",
                   help="2 s per mode, 100k ids, 10 iters, 1 server, 2 rounds")
    args = p.parse_args()
    if args.quick:
        args.seconds, args.ids, args.iters, args.servers = 2.0, 100_000, 10, [1]
        args.rounds = 2
    for name, fn in (("throughput", bench_throughput), ("real", bench_throughput_real),
                     ("bytes", bench_bytes), ("latency", bench_latency)):
        if args.only in (None, name):
            fn(args)


if __name__ == "__main__":
    main()
