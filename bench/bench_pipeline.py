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
the stages differ by 5-12 %. The "equal" rows (`--chains ... equal`; left out of the default
run since 2026-12-02, as the timed chains below test equal stages more exactly) put a
learnable input scale in front (InputScale), so the first stage computes its input's
gradient like the others. The "spin" and
"sleep" rows replace the layers with `Timed` ones whose forward takes exactly --timed-ms per
stage and micro-batch and whose backward twice that, with the same activations sent
between the stages: equal stages with no cache or memory-bus effects, so their bubble is
the pipeline runtime's own (schedule, send/recv, Python). "spin" keeps both cores busy as
real compute does; "sleep" leaves them free for the communication threads, so spin minus
sleep is what two ranks sharing two cores cost the transfers. The "long" rows spin for
--long-ms (4x as long) with the same activations: a cost paid per micro-batch (a transfer,
the schedule's Python) grows far less than the work ("excess" column, ms) and shrinks against
the theory as the stage's work grows. Beside the timed gpipe rows (and the long 1f1b rows),
a hand-written p = 2 step of the same schedule (isend/irecv, receives posted at the start,
torch's order of chunks, no autograd, both ranks' chunks held for exactly the chain's times)
gives the bubble of the transfers alone: what any pipeline over gloo on this host pays. For
the "long" rows it runs again with the bench's loss computed on its last rank with
autograd: what the loss adds to any pipeline (the last stage does more work per micro-batch
than the first, which the theory's equal stages leave out). Activations and gradients go
on a process group each, as bigtrain's do; the long 1f1b row at m = 8 also runs with both
on one group, where the two ranks' sends to each other at the same moment stall in gloo.
With it, the median time the sender spends inside one isend call, and the same transfer's
cost to the kernel alone (a loopback socket `sendall`, no torch; these baselines live in
bench/pipeline_baselines.py). Each rank runs one torch thread.

Beside it (bench/pipeline_timeline.py): the same step replayed from its measured chunk
durations with free send/recv and no scheduler overhead (the bubble this schedule gives with
these chunks), and again with each chunk's thread CPU time as its duration (the chunks as
they run when no other program takes the core mid-chunk); the idle time split into blocked
in a send/recv wait, posting send/recv ops and the schedule's own Python (overhead); and the
share of busy time a chunk spent descheduled (wall minus its thread's CPU time: other
programs had the core).

Receive order: bigtrain posts a step's receives at its start (bigtrain.parallel.early_recv);
each "plain" row is run again with torch's order (each receive posted just before its wait),
the "torch order" column, the two runs taking turns at going first, with `--compare` (left
out of the default run since 2026-12-01: four more runs, and bench/RESULTS.md's earlier
runs all measured the gain).

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
from bench.pipeline_baselines import (hand_pipeline, hold, mse, one_way_seconds,  # noqa: E402
                                      socket_send_ms)
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


class _Timed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, seconds, kind):
        ctx.seconds, ctx.kind = seconds, kind
        hold(seconds, kind)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        hold(2 * ctx.seconds, ctx.kind)
        return grad.clone(), None, None


class Timed(nn.Module):
    """A layer whose forward takes exactly `seconds` and whose backward twice that, spinning
    on the core ("spin": the core is as busy as with real compute) or sleeping ("sleep": the
    core is free for the communication threads). A chain of them has equal stages with no
    cache or memory-bus effects, so its bubble is the pipeline runtime's alone."""

    def __init__(self, seconds: float, kind: str):
        super().__init__()
        self.seconds, self.kind = seconds, kind
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return _Timed.apply(x * self.w, self.seconds, self.kind)


CHAINS = ("plain", "equal", "spin", "sleep", "long")
DEFAULT_CHAINS = ("plain", "spin", "sleep", "long")
TIMED = ("spin", "sleep", "long")


def _chain(hidden: int, layers: int, kind: str = "plain", chunk_ms: float = 3.0,
           stages: int = 2) -> nn.Sequential:
    torch.manual_seed(0)
    if kind in TIMED:  # a stage's forward: chunk_ms per micro-batch
        per_layer = chunk_ms / 1e3 / (layers // stages)
        hold = "sleep" if kind == "sleep" else "spin"
        return nn.Sequential(*(Timed(per_layer, hold) for _ in range(layers)))
    blocks = [nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU()) for _ in range(layers)]
    return nn.Sequential(*([InputScale()] if kind == "equal" else []), *blocks)


def _pin(rank: int, pin: bool) -> None:
    torch.set_num_threads(1)
    if pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {rank % (os.cpu_count() or 1)})


def _bench(rank, world, schedule, m, hidden, layers, micro_rows, warmup, steps, pin,
           early=True, kind="plain", chunk_ms=3.0):
    """The timed steps' timelines of this rank (see pipeline_timeline); `early`: receives
    posted at the step's start (bigtrain's default on gloo), else in torch's order;
    `kind`: the chain (CHAINS; "equal" starts with InputScale, on the first stage)."""
    _pin(rank, pin)
    equal = kind == "equal"
    split = [layers // world + (1 if equal and r == 0 else 0) for r in range(world)]
    strategy = Pipeline(stages=world, microbatches=m, schedule=schedule, split=split)
    strategy.early_recv = early
    strategy.setup(DistEnv(rank=rank, world_size=world))
    module = strategy.setup_module(_chain(hidden, layers, kind, chunk_ms, world))
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
    loss = lambda out, t, sw: mse(out, t)  # noqa: E731
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


def measure(schedule, m, args, early=True, kind="plain") -> dict:
    p = args.stages
    chunk_ms = args.long_ms if kind == "long" else args.timed_ms
    per_rank = run_ranks(_bench, p, schedule, m, args.hidden, args.layers, args.micro_rows,
                         args.warmup, args.steps, args.pin, early, kind, chunk_ms,
                         timeout=600)
    rows = []
    for s in range(args.steps):
        ranks = [per_rank[r][s] for r in range(p)]
        parts = [breakdown(st) for st in ranks]
        # from the first stage's entry (the pipeline cannot start before it; a rank that
        # left the barrier earlier was not waiting on the pipeline) to the last rank out
        span = max(st["end"] for st in ranks) - ranks[0]["start"]
        rows.append({"bubble": sum(1 - b["busy"] / span for b in parts) / p,
                     "own_wall": sum(b["bubble"] for b in parts) / p, "replay": replay(ranks),
                     "span_ms": 1e3 * span,
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
    ap.add_argument("--no-hand", action="store_true",
                    help="skip the hand-written GPipe rows beside the timed chains")
    ap.add_argument("--compare", action="store_true",
                    help="also run the plain rows with torch's receive order")
    ap.add_argument("--chains", nargs="+", choices=CHAINS, default=list(DEFAULT_CHAINS),
                    help="which chains' rows to run (default: all but equal)")
    ap.add_argument("--timed-ms", type=float, default=3.0,
                    help="a timed stage's forward per micro-batch, ms (backward: twice)")
    ap.add_argument("--long-ms", type=float, default=12.0,
                    help="the same for the \"long\" rows (spin)")
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
          "chunk was off its core; excess: idle time beyond theory per micro-batch and rank, "
          "ms ((bubble - theory) / (1 - theory) x span / m); skew: "
          "how far apart the ranks entered the step (median)")
    print(f"  {'chain':<5} {'schedule':<8} {'m':>2} {'measured':>8} {'theory':>6} {'ratio':>5} "
          f"{'rank wall':>9} {'torch order':>11} {'replay':>6} {'ratio':>5} "
          f"{'cpu replay':>10} {'eq replay':>9} {'stage imb':>9} "
          f"{'p2p wait':>8} {'post':>5} {'sched':>5} "
          f"{'desched':>7} {'chunk ms':>8} {'excess':>6} {'skew ms':>7}  per-step ratios")
    busy0 = machine_busy_seconds()
    t0 = time.perf_counter()
    rows = [(k, s, m) for k in args.chains for s in ("gpipe", "1f1b") for m in (4, 8)]
    # (chain, schedule, m) -> bigtrain, hand-written, isend ms, with the loss, on one group
    hand_rows = {}
    for i, (kind, schedule, m) in enumerate(rows):
        torch_order = None
        if not args.compare or kind != "plain":
            r = measure(schedule, m, args, kind=kind)
        elif i % 2:  # the two receive orders take turns at going first
            torch_order = measure(schedule, m, args, early=False)
            r = measure(schedule, m, args)
        else:
            r = measure(schedule, m, args)
            torch_order = measure(schedule, m, args, early=False)
        theory = (p - 1) / (m + p - 1)
        if kind in TIMED and p == 2 and not args.no_hand and (
                schedule == "gpipe" or kind == "long"):
            # the hand-written step right after bigtrain's, with the same chunk times
            hand, post_ms = hand_pipeline(m, args, kind, schedule=schedule)
            # and with the bench's loss on the last rank (the 12 ms rows: the headline)
            lossy = (hand_pipeline(m, args, kind, loss=True, schedule=schedule)[0]
                     if kind == "long" else None)
            # and 1f1b with both directions on one group (what bigtrain did before), m = 8
            one = (hand_pipeline(m, args, kind, schedule=schedule, one_group=True)[0]
                   if kind == "long" and schedule == "1f1b" and m == 8 else None)
            hand_rows[kind, schedule, m] = (r["bubble"] / theory, hand / theory, post_ms,
                                            None if lossy is None else lossy / theory,
                                            None if one is None else one / theory)
        tord = "-" if torch_order is None else f"{torch_order['bubble'] / theory:.2f}"
        print(f"  {kind:<5} {schedule:<8} {m:>2} "
              f"{r['bubble']:>8.3f} {theory:>6.3f} "
              f"{r['bubble'] / theory:>5.2f} {r['own_wall'] / theory:>8.2f}x "
              f"{tord + ('x' if torch_order is not None else ''):>11} "
              f"{r['replay']:>6.3f} "
              f"{r['replay'] / theory:>5.2f} {r['replay_cpu'] / theory:>9.2f}x "
              f"{r['replay_eq'] / theory:>8.2f}x {r['imbalance']:>8.2f}x "
              f"{r['wait']:>8.1%} {r['post']:>5.1%} "
              f"{r['overhead']:>5.1%} {r['descheduled']:>7.1%} {r['chunk_ms']:>8.1f} "
              f"{(r['bubble'] - theory) / (1 - theory) * r['span_ms'] / m:>6.2f} "
              f"{r['skew_ms']:>7.2f}  "
              f"{' '.join(f'{b / theory:.2f}' for b in r['all'])}", flush=True)
    if hand_rows:
        one_way = one_way_seconds(args.micro_rows * args.hidden)
        print(f"  one micro-batch's activations ({args.micro_rows * args.hidden * 4 // 1024} "
              f"KiB) from one rank to the other: {one_way * 1e3:.3f} ms (half a send/recv "
              "round trip, median)")
        print("  hand-written GPipe and 1F1B, p = 2 (isend/irecv, every receive posted at the "
              "step's start, torch's order of chunks, no autograd, both ranks' chunks exactly "
              "the chain's times, activations and gradients on a group each; \"on one "
              "group\": both directions on one), bubble / theory, and the median time the "
              "sender spends inside one isend call:")
        for (kind, schedule, m), (ours, hand, post_ms, lossy, one) in hand_rows.items():
            with_loss = "" if lossy is None else f", with the bench's loss {lossy:.2f}"
            one_group = "" if one is None else f", on one group {one:.2f}"
            print(f"    {kind:<5} {schedule:<5} m={m}: bigtrain {ours:.2f}, hand-written "
                  f"{hand:.2f}{with_loss}{one_group} (isend call {post_ms:.2f} ms)")
        nbytes = args.micro_rows * args.hidden * 4
        for gap in sorted({args.timed_ms, args.long_ms}):
            med, p90 = socket_send_ms(nbytes, gap)
            print(f"  the kernel alone (no torch, no gloo): one {nbytes // 1024} KiB send on a "
                  f"loopback TCP socket after {gap:g} ms idle takes {med:.2f} ms (median), "
                  f"{p90:.2f} ms (90th percentile)")
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
