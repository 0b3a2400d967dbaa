"""Pipeline bubble: measured idle fraction of each stage vs the (p-1)/(m+p-1) theory.

For GPipe and 1F1B at m = 4 and 8 micro-batches on p ranks, each stage's busy time is the
time spent inside its forward and backward chunks; the bubble is 1 - busy / wall, averaged
over the stages and over timed steps (after warm-up steps that include the schedule's
metadata pass). The model is a chain of equal Linear+ReLU layers, so the stages are equal.

Run (from the repository root):
    python bench/bench_pipeline.py                 # p=2, hidden 1024, 8 layers
    python bench/bench_pipeline.py --stages 4 --hidden 512
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bigtrain.parallel.base import DistEnv, StepBatch  # noqa: E402
from bigtrain.parallel.pipeline import Pipeline  # noqa: E402
from tests.dist import run_ranks  # noqa: E402  (the project's spawn helper)


def _timed(fn, bucket: list):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            bucket.append(time.perf_counter() - t0)
    return wrapper


def _bench(rank, world, schedule, m, hidden, layers, micro_rows, warmup, steps):
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())
                            for _ in range(layers)])
    strategy = Pipeline(stages=world, microbatches=m, schedule=schedule,
                        split=[layers // world] * world)
    strategy.setup(DistEnv(rank=rank, world_size=world))
    module = strategy.setup_module(model)
    opt = strategy.setup_optimizer(module, lambda ps: torch.optim.SGD(ps, lr=1e-3))
    busy: list[float] = []
    wall: list[float] = []  # the schedule alone (not the optimizer or loss broadcast)
    rt = strategy._rt
    rt.schedule.step = _timed(rt.schedule.step, wall)
    for st in rt.pstages:  # instrument compute only (not send/recv waits)
        st.forward_one_chunk = _timed(st.forward_one_chunk, busy)
        st.backward_one_chunk = _timed(st.backward_one_chunk, busy)
    x = torch.randn(m * micro_rows, hidden)
    y = torch.randn(m * micro_rows, hidden)
    loss = lambda out, t, sw: ((out - t) ** 2).mean()  # noqa: E731
    fractions = []
    for step in range(warmup + steps):
        busy.clear()
        wall.clear()
        torch.distributed.barrier()
        strategy.train_step(module, opt, StepBatch([(x, y, None)], [1.0]), loss,
                            contextlib.nullcontext)
        if step >= warmup:
            fractions.append(1.0 - sum(busy) / wall[0])
    strategy.teardown()
    return sum(fractions) / len(fractions)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--micro-rows", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    p = args.stages
    print(f"p={p} stages, {args.layers} x Linear({args.hidden}) + ReLU, "
          f"{args.micro_rows} rows per micro-batch, {args.steps} timed steps")
    print(f"{'schedule':<8} {'m':>3} {'measured':>9} {'theory':>7} {'ratio':>6}")
    for schedule in ("gpipe", "1f1b"):
        for m in (4, 8):
            per_rank = run_ranks(_bench, p, schedule, m, args.hidden, args.layers,
                                 args.micro_rows, args.warmup, args.steps, timeout=600)
            measured = sum(per_rank) / p
            theory = (p - 1) / (m + p - 1)
            print(f"{schedule:<8} {m:>3} {measured:>9.3f} {theory:>7.3f} "
                  f"{measured / theory:>6.2f}")


if __name__ == "__main__":
    main()
