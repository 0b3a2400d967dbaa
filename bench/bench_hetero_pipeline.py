"""Heterogeneous pipeline on 2 gloo ranks, rank 1 made 3x slower by the slow-rank knob: step
time of the speed-aware partition (each rank times the layers on its own device, stages
priced on their owner) against the equal partition (split=[4, 4] given explicitly).

Model: a chain of 8 equal Linear(1024) + ReLU layers, 8 micro-batches of 64 rows, 1F1B, SGD.
The knob makes rank 1 sleep twice the time of each of its forward and backward chunks (and
of its layer timings, so the measured partition sees it).

Each rank builds both contenders once (the speed-aware one measures and cuts the model at
set-up). Repeats alternate the two (order rotated every repeat, bench.common.alternate); a
repeat is `--steps` steps after a barrier and its time is the slower rank's. The table gives
ms per step and the ratio (goal: speed-aware / equal <= 0.6). Ideal: the slowest stage drops
from 4 x 3 = 12 layer-times to max(6 x 1, 2 x 3) = 6, so 0.5; with the pipeline's fill and
drain (M - 1) x slowest + sum of stages, M = 8: (7 x 6 + 12) / (7 x 12 + 16) = 0.54.

    python bench/bench_hetero_pipeline.py            # about a minute on 2 cores
    python bench/bench_hetero_pipeline.py --quick    # 3 steps per repeat
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (Row, alternate, machine_busy_seconds, machine_line,  # noqa: E402
                          report_step_ratio)
from tests.dist import run_ranks  # noqa: E402

WORLD, SLOW, LAYERS, WIDTH, MICRO, ROWS = 2, 3.0, 8, 1024, 8, 64
TARGET = 0.6  # speed-aware step time / equal-partition step time
QUIET_CORES = 0.2  # other programs' CPU (cores) above which the figures are flagged


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU())
                           for _ in range(LAYERS)])


class Contender:
    """One Pipeline set up on this rank, stepping on a fixed batch of MICRO x ROWS rows."""

    def __init__(self, strategy):
        from bigtrain.parallel.base import DistEnv, StepBatch
        self.strategy = strategy
        strategy.validate(WORLD, MICRO * ROWS)
        strategy.setup(DistEnv(rank=dist.get_rank(), world_size=WORLD))
        self.module = strategy.setup_module(_model())
        self.opt = strategy.setup_optimizer(self.module,
                                            lambda ps: torch.optim.SGD(ps, lr=1e-3))
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(MICRO * ROWS, WIDTH, generator=g), torch.randn(MICRO * ROWS, WIDTH,
                                                                          generator=g)
        self.batch = StepBatch([(x, y, None)], [1.0])

    def run(self, steps: int) -> float:
        """Seconds for `steps` steps, the slower rank's (after a barrier)."""
        loss = lambda out, t, sw: ((out - t) ** 2).mean()  # noqa: E731
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(steps):
            self.strategy.train_step(self.module, self.opt, self.batch, loss,
                                     contextlib.nullcontext)
        took = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        dist.all_reduce(took, op=dist.ReduceOp.MAX)
        return float(took)


def bench_rank(rank: int, world: int, steps: int, repeats: int) -> dict:
    from bigtrain.parallel.pipeline import Pipeline
    slow = {1: SLOW}
    common = dict(stages=WORLD, microbatches=MICRO, schedule="1f1b", slow_ranks=slow)
    even = Contender(Pipeline(split=[LAYERS // WORLD] * WORLD, **common))
    speed = Contender(Pipeline(sample_input=torch.randn(ROWS, WIDTH), **common))
    busy0, cpu0, t0 = machine_busy_seconds(), time.process_time(), time.perf_counter()
    times = alternate({"equal partition": lambda: even.run(steps),
                       "speed-aware": lambda: speed.run(steps)}, repeats=repeats, warmup=1)
    wall = time.perf_counter() - t0
    ours = torch.tensor([time.process_time() - cpu0], dtype=torch.float64)
    dist.all_reduce(ours)  # CPU seconds of all ranks (every thread) over the repeats
    busy = machine_busy_seconds()
    costs = speed.strategy.layer_costs  # [pipeline rank x layer] seconds
    return {"times": times, "partition": speed.strategy.partition,
            "cost_ratio": sum(costs[1]) / sum(costs[0]), "threads": torch.get_num_threads(),
            "others_cores": None if busy is None else (busy - busy0 - float(ours)) / wall,
            "ours_cores": float(ours) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 steps per repeat")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    steps = args.steps or (3 if args.quick else 5)
    out = run_ranks(bench_rank, WORLD, steps, args.repeats, timeout=540.0)[0]
    print(machine_line() + f" (in each rank: {out['threads']} torch threads)")
    if out["others_cores"] is not None:
        print(f"during the repeats the ranks used {out['ours_cores']:.2f} cores, other "
              f"programs {max(0.0, out['others_cores']):.2f} of {os.cpu_count()}"
              + (" (not quiet: the speed-aware step keeps rank 0 busy most of the time, so "
                 "it loses more to them than the mostly idle equal partition)"
                 if out["others_cores"] > QUIET_CORES else ""))
    print(f"rank 1 slowed {SLOW:.0f}x by the knob; {LAYERS} x Linear({WIDTH}) + ReLU, "
          f"{MICRO} micro-batches of {ROWS} rows, 1f1b")
    print(f"  measured cost of the layers on rank 1 / rank 0: {out['cost_ratio']:.2f}x; "
          f"speed-aware partition {out['partition']} (equal: {[LAYERS // WORLD] * WORLD}; "
          f"ideal for 3x: [6, 2])")
    rows = [Row(name, MICRO * ROWS * steps, secs) for name, secs in out["times"].items()]
    report_step_ratio(f"{steps} steps per repeat, 2 pipeline ranks", rows, steps,
                      "speed-aware", "equal partition", TARGET)


if __name__ == "__main__":
    main()
