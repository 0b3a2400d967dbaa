"""Pipeline bubble: measured idle share of each stage vs the (p-1)/(m+p-1) theory, where the
rest of the idle time goes, and how much of it the machine causes.

How the bubble is measured: on every rank, for each timed step (after warm-up steps that
include the schedule's shape exchange), busy = the time inside that rank's forward chunks,
backward chunks and (last stage) loss; the step's span runs from the first stage entering
the schedule's `step` call (nothing can run before it) to the last rank leaving it (one
clock: perf_counter is CLOCK_MONOTONIC, shared by the processes of a host); bubble = 1 -
busy / span, averaged over the ranks, as in the (p-1)/(m+p-1) theory; the table gives the
median over the timed steps. "rank wall" is the older reading, 1 - busy / the rank's own
`step` call: it leaves out the last stage's idle tail (it leaves the step while the first
stage still runs its last backward) and so reads below the span's figure, and could read
below theory. Each step starts after a barrier. The model is a chain of equal Linear+ReLU
layers ("plain"); its first stage skips its input's gradient and its last adds the loss, so
the stages differ by 5-12 %. The "equal" rows put a learnable input scale in front
(InputScale), so the first stage computes its input's gradient like the others: those rows
test the schedule and the runtime against the theory's equal stages. Each rank runs one
torch thread.

Beside it (bench/pipeline_timeline.py): the same step replayed from its measured chunk
durations with free send/recv and no scheduler overhead (the bubble this schedule gives with
these chunks), and again with each chunk's thread CPU time as its duration (the chunks as
they run when no other program takes the core mid-chunk); the idle time split into blocked
in a send/recv wait, posting send/recv ops and the schedule's own Python (overhead); and the
share of busy time a chunk spent descheduled (wall minus its thread's CPU time: other
programs had the core).

Receive order: bigtrain posts a step's receives at its start (bigtrain.parallel.early_recv);
each "plain" row is run again with torch's order (each receive posted just before its wait),
the "torch order" column, the two runs taking turns at going first, unless `--no-compare`.

Control (`--control`): every rank runs its stage's forward and backward over the same
micro-batches with no communication, both ranks at once, then one rank alone: the
slowdown of running together is what two ranks sharing this machine's cores cost.

    python bench/bench_pipeline.py                 # p=2, hidden 1024, 8 layers, control
    python bench/bench_pipeline.py --pin           # rank r pinned to core r (taskset)
    python bench/bench_pipeline.py --quick
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench.common import machine_busy_seconds, machine_line  # noqa: E402
from bench.pipeline_timeline import Recorder, attach, breakdown, replay  # noqa: E402
from bigtrain.parallel.base import DistEnv, StepBatch  # noqa: E402
from bigtrain.parallel.pipeline import Pipeline  # noqa: E402
from tests.dist import run_ranks  # noqa: E402  (the project's spawn helper)


class InputScale(nn.Module):
    """x * a with a learnable scalar a: the first Linear after it then computes its input's
    gradient, as every later Linear does, so the first stage's backward costs what the
    other stages' do (the "equal" chain)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x * self.a


def _chain(hidden: int, layers: int, equal: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU()) for _ in range(layers)]
    return nn.Sequential(*([InputScale()] if equal else []), *blocks)


def _pin(rank: int, pin: bool) -> None:
    torch.set_num_threads(1)
    if pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {rank % (os.cpu_count() or 1)})


def _bench(rank, world, schedule, m, hidden, layers, micro_rows, warmup, steps, pin,
           early=True, equal=False):
    """The timed steps' timelines of this rank (see pipeline_timeline); `early`: receives
    posted at the step's start (bigtrain's default on gloo), else in torch's order;
    `equal`: the chain starts with InputScale (on the first stage)."""
    _pin(rank, pin)
    split = [layers // world + (1 if equal and r == 0 else 0) for r in range(world)]
    strategy = Pipeline(stages=world, microbatches=m, schedule=schedule, split=split)
    strategy.early_recv = early
    strategy.setup(DistEnv(rank=rank, world_size=world))
    module = strategy.setup_module(_chain(hidden, layers, equal))
    opt = strategy.setup_optimizer(module, lambda ps: torch.optim.SGD(ps, lr=1e-3))
    rt, rec = strategy._rt, Recorder()
    attach(rt, rec)
    inner = rt.schedule.step

    def step(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            if rec.on:
                rec.end(t0, time.perf_counter())
    rt.schedule.step = step
    x, y = torch.randn(m * micro_rows, hidden), torch.randn(m * micro_rows, hidden)
    loss = lambda out, t, sw: ((out - t) ** 2).mean()  # noqa: E731
    for i in range(warmup + steps):
        torch.distributed.barrier()
        if i >= warmup:
            rec.begin()
        strategy.train_step(module, opt, StepBatch([(x, y, None)], [1.0]), loss,
                            contextlib.nullcontext)
    strategy.teardown()
    return rec.steps


def _control(rank, world, m, hidden, layers, micro_rows, steps, pin, stages):
    """Seconds (wall, thread CPU) per stage pass of m forward+backward micro-batches with
    no communication; `world` ranks at once."""
    _pin(rank, pin)
    stage = _chain(hidden, layers)[: layers // stages]
    x = torch.randn(micro_rows, hidden)
    out = []
    for i in range(1 + steps):
        if world > 1:
            torch.distributed.barrier()
        t0, c0 = time.perf_counter(), time.thread_time()
        for _ in range(m):
            stage(x).square().mean().backward()
        if i:
            out.append((time.perf_counter() - t0, time.thread_time() - c0))
    return out


def measure(schedule, m, args, early=True, equal=False) -> dict:
    p = args.stages
    per_rank = run_ranks(_bench, p, schedule, m, args.hidden, args.layers, args.micro_rows,
                         args.warmup, args.steps, args.pin, early, equal, timeout=600)
    rows = []
    for s in range(args.steps):
        ranks = [per_rank[r][s] for r in range(p)]
        parts = [breakdown(st) for st in ranks]
        # from the first stage's entry (the pipeline cannot start before it; a rank that
        # left the barrier earlier was not waiting on the pipeline) to the last rank out
        span = max(st["end"] for st in ranks) - ranks[0]["start"]
        rows.append({"bubble": sum(1 - b["busy"] / span for b in parts) / p,
                     "own_wall": sum(b["bubble"] for b in parts) / p, "replay": replay(ranks),
                     "skew_ms": 1e3 * (max(st["start"] for st in ranks)
                                       - min(st["start"] for st in ranks)),
                     "replay_cpu": replay(ranks, cpu=True),
                     "replay_eq": replay(ranks, equalize=True),
                     "imbalance": max(b["busy"] for b in parts) / min(b["busy"] for b in parts),
                     **{k: sum(b[k] / b["wall"] for b in parts) / p
                        for k in ("wait", "post", "overhead", "descheduled")},
                     "chunk_ms": 1e3 * sum(b["busy"] for b in parts) / p / (2 * m)})
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]} | {
        "all": [r["bubble"] for r in rows]}


def control(args) -> tuple[float, float]:
    """(median wall seconds of a stage pass with both ranks running at once / alone,
    median CPU-time ratio the same way)."""
    a = (args.micro_rows, args.steps, args.pin, args.stages)
    both = run_ranks(_control, 2, 8, args.hidden, args.layers, *a, timeout=600)
    alone = run_ranks(_control, 1, 8, args.hidden, args.layers, *a, timeout=600)
    w2 = statistics.median(w for r in both for w, _ in r)
    c2 = statistics.median(c for r in both for _, c in r)
    w1 = statistics.median(w for w, _ in alone[0])
    c1 = statistics.median(c for _, c in alone[0])
    return w2 / w1, c2 / c1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--micro-rows", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--pin", action="store_true", help="rank r on core r (sched_setaffinity)")
    ap.add_argument("--no-control", action="store_true")
    ap.add_argument("--no-compare", action="store_true",
                    help="skip the runs with torch's receive order")
    ap.add_argument("--no-equal", action="store_true",
                    help="skip the rows of the equal-stage chain")
    ap.add_argument("--quick", action="store_true", help="fewer timed steps")
    args = ap.parse_args(argv)
    args.steps = args.steps or (4 if args.quick else 8)
    p = args.stages
    print(f"bench_pipeline: p={p} stages, {args.layers} x Linear({args.hidden}) + ReLU, "
          f"{args.micro_rows} rows per micro-batch, {args.steps} timed steps, 1 thread per "
          f"rank{', pinned' if args.pin else ''}\n  {machine_line()}")
    print("  bubble: median over steps of 1 - busy/span (mean over ranks; span: first stage "
          "in to last rank out); rank wall: 1 - busy/the rank's own step call, as a ratio to "
          "theory; torch order: the measured ratio with each receive posted just before its "
          "wait, as torch's schedules do (bigtrain posts a step's receives at its start); "
          "replay: the same chunks with free p2p and no overhead (ratio to theory), cpu "
          "replay: with each chunk's thread CPU time; eq replay: with every stage's chunks "
          "scaled to the same step total; stage imb: the busier stage's compute / the "
          "other's; idle split as % of wall (mean over ranks); desched: share of wall a "
          "chunk was off its core; skew: "
          "how far apart the ranks entered the step (median)")
    print(f"  {'chain':<5} {'schedule':<8} {'m':>2} {'measured':>8} {'theory':>6} {'ratio':>5} "
          f"{'rank wall':>9} {'torch order':>11} {'replay':>6} {'ratio':>5} "
          f"{'cpu replay':>10} {'eq replay':>9} {'stage imb':>9} "
          f"{'p2p wait':>8} {'post':>5} {'sched':>5} "
          f"{'desched':>7} {'chunk ms':>8} {'skew ms':>7}  per-step ratios")
    busy0 = machine_busy_seconds()
    t0 = time.perf_counter()
    rows = [(False, s, m) for s in ("gpipe", "1f1b") for m in (4, 8)]
    rows += [] if args.no_equal else [(True, s, m) for s in ("gpipe", "1f1b") for m in (4, 8)]
    for i, (equal, schedule, m) in enumerate(rows):
        torch_order = None
        if args.no_compare or equal:
            r = measure(schedule, m, args, equal=equal)
        elif i % 2:  # the two receive orders take turns at going first
            torch_order = measure(schedule, m, args, early=False)
            r = measure(schedule, m, args)
        else:
            r = measure(schedule, m, args)
            torch_order = measure(schedule, m, args, early=False)
        theory = (p - 1) / (m + p - 1)
        tord = "-" if torch_order is None else f"{torch_order['bubble'] / theory:.2f}"
        print(f"  {'equal' if equal else 'plain':<5} {schedule:<8} {m:>2} "
              f"{r['bubble']:>8.3f} {theory:>6.3f} "
              f"{r['bubble'] / theory:>5.2f} {r['own_wall'] / theory:>8.2f}x "
              f"{tord:>10}x "
              f"{r['replay']:>6.3f} "
              f"{r['replay'] / theory:>5.2f} {r['replay_cpu'] / theory:>9.2f}x "
              f"{r['replay_eq'] / theory:>8.2f}x {r['imbalance']:>8.2f}x "
              f"{r['wait']:>8.1%} {r['post']:>5.1%} "
              f"{r['overhead']:>5.1%} {r['descheduled']:>7.1%} {r['chunk_ms']:>8.1f} "
              f"{r['skew_ms']:>7.2f}  "
              f"{' '.join(f'{b / theory:.2f}' for b in r['all'])}", flush=True)
    if busy0 is not None:
        others = (machine_busy_seconds() - busy0) / (time.perf_counter() - t0)
        print(f"  whole machine busy during the runs: {others:.2f} of {os.cpu_count()} cores "
              "(ours included)")
    if not args.no_control:
        wall, cpu = control(args)
        print(f"  control, {args.layers // p} layers x 8 micro-batches, no communication: a "
              f"stage pass with both ranks at once takes {wall:.2f}x its time alone (wall), "
              f"{cpu:.2f}x in thread CPU time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
