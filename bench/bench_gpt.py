"""GPT training throughput (tokens/s) on this machine: single process, tp=2, pp=2.

Each variant trains GPTConfig.small() (6 layers, width 192, 128 tokens, vocab 4096) with
SGD on random tokens for `--steps` timed steps after warm-up; tokens/s counts the global
batch (batch x block_size tokens) per step time as seen by rank 0. The single process uses
all cores (and, for
comparison, one core); the 2-rank variants use cores / 2 threads each (gloo on CPU).

Run (from the repository root):
    python bench/bench_gpt.py
    python bench/bench_gpt.py --batch 16 --steps 10
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bigtrain.engine.step import train_step  # noqa: E402
from bigtrain.parallel.base import DistEnv, StepBatch, Strategy  # noqa: E402
from bigtrain.parallel.context import StepContext  # noqa: E402
from bigtrain.parallel.pipeline import Pipeline  # noqa: E402
from bigtrain.parallel.tensor_parallel import TensorParallel  # noqa: E402
from bigtrain.zoo.gpt import GPT, GPTConfig, gpt_loss  # noqa: E402
from tests.dist import run_ranks  # noqa: E402  (the project's spawn helper)


def _strategy(kind: str) -> Strategy:
    return {"single": Strategy, "tp2": lambda: TensorParallel(degree=2),
            "pp2": lambda: Pipeline(stages=2, microbatches=4, schedule="1f1b")}[kind]()


def _train(rank, world, kind, batch, warmup, steps):
    cfg = GPTConfig.small()
    torch.manual_seed(0)
    strategy = _strategy(kind)
    strategy.validate(world, batch)
    strategy.setup(DistEnv(rank=rank, world_size=world))
    module = strategy.setup_module(GPT(cfg))
    opt = strategy.setup_optimizer(module, lambda ps: torch.optim.SGD(ps, lr=1e-3))
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size))
    step_batch = StepBatch([(x, x, None)], [1.0])
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        train_step(strategy, StepContext(), module, opt, step_batch,
                   lambda o, y, sw: gpt_loss(o, y, sw), contextlib.nullcontext)
    elapsed = time.perf_counter() - t0
    strategy.teardown()
    return batch * cfg.block_size * steps / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    print(f"GPTConfig.small(), batch {args.batch} x 128 tokens, {cores} cores")
    single = 0.0
    for threads in sorted({1, cores}):  # all cores, and one core (what each rank gets at 2)
        torch.set_num_threads(threads)
        tps = _train(0, 1, "single", args.batch, args.warmup, args.steps)
        single = max(single, tps)
        print(f"{'single':<7} {tps:>10.0f} tokens/s  ({threads} threads)")
    for kind in ("tp2", "pp2"):
        tps = run_ranks(_train, 2, kind, args.batch, args.warmup, args.steps, timeout=600)[0]
        print(f"{kind:<7} {tps:>10.0f} tokens/s  ({tps / single:.2f}x the best single)")


if __name__ == "__main__":
    main()
