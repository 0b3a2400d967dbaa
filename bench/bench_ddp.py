"""Data-parallel cost on 2 gloo ranks: bigtrain's "ddp" strategy against a hand-written
DistributedDataParallel loop, and per-rank model-state memory of "zero3" against "ddp".

Speed. Model and data as bench_fit (1000-512-10 MLP, Adam, teacher data); the batch size
is GLOBAL (each rank takes half of every batch); each rank uses cores/2 torch threads.
    bigtrain ddp   the engine's `train` with the resolved "ddp" strategy, as `fit(...,
                   strategy="ddp")` runs in each rank: fresh model per repeat, 2 epochs,
                   the second (warm) epoch's time from `FitResult.stats["epoch_times"]`.
    hand DDP       DDP(model), fused Adam, index_select shards of a shared permutation,
                   cross_entropy on class ids, loss and hits on the device, one all-reduce
                   per epoch. Built and warmed once; one epoch per repeat.
Both run in the same rank processes, alternating, after a barrier; a repeat's time is the
slower rank's. The table gives ms per step and the ratio (goal: bigtrain / hand <= 1.03).
The comparison runs in `--launches` fresh sets of rank processes (default 3, 4 repeats
each), and the figure is the median of their ratios: one launch alone read 0.92-1.09 over
six runs on two machines, with up to 29 % between its own repeats.

Memory. One step of "ddp" and of "zero3" through the engine; right after the optimizer
step (before grads are freed) each rank counts the bytes of its local parameters,
gradients and optimizer state (DTensor: `.to_local()`), compared with the ZeRO formula
for fp32 Adam: 4 (param) + 4 (grad) + 8 (Adam m, v) = 16 bytes/param under ddp, 16/N under
zero3 (N ranks).

    python bench/bench_ddp.py            # about 2 minutes on 2 cores (3 launches)
    python bench/bench_ddp.py --quick    # well under a minute
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_fit import CLASSES, FEATURES, HIDDEN, LR, teacher_data, torch_mlp  # noqa: E402
from bench.common import Row, check_target, machine_line, print_table  # noqa: E402
from tests.dist import run_ranks  # noqa: E402

WORLD = 2
ADAM_BYTES_PER_PARAM = 16  # fp32: param 4 + grad 4 + exp_avg 4 + exp_avg_sq 4


def _bigtrain_task(x, y_onehot, batch: int, epochs: int):
    """(owner model, TrainTask) built identically on every rank."""
    import bigtrain
    from bigtrain.api.training import make_task, prepare_data
    from bigtrain.engine.task import FitConfig
    from bigtrain.layers import Dense, Input
    from bigtrain.models import Model
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(FEATURES,))
    model = Model(inp, Dense(CLASSES, activation="softmax")(Dense(HIDDEN, activation="relu")(inp)))
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"],
                  learning_rate=LR)
    cfg = FitConfig(epochs=epochs, batch_size=batch, verbose=0, seed=0)
    return model, make_task(model, prepare_data(model, x, y_onehot), None, cfg, [])


def _run_engine(model, task, strategy_name: str):
    """What `fit(strategy=...)` does inside one launched rank; returns the FitResult."""
    from bigtrain.engine.loop import run_rank
    from bigtrain.parallel import resolve_strategy
    from bigtrain.parallel.base import DistEnv
    env = DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(),
                  local_rank=dist.get_rank(), local_world_size=dist.get_world_size(),
                  device=torch.device("cpu"))
    return run_rank(task, resolve_strategy(strategy_name), model, env)


def _hand_ddp(x, y, batch: int, rank: int, world: int):
    """A well-written DDP epoch as a zero-argument callable."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    model = DDP(torch_mlp())
    opt = torch.optim.Adam(model.parameters(), lr=LR, fused=True)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    n, gen = len(xt), torch.Generator().manual_seed(0)  # same permutation on every rank

    def epoch():
        perm = torch.randperm(n, generator=gen)
        loss_sum, hits, seen = torch.zeros(()), torch.zeros(()), 0
        for start in range(0, n, batch):
            gidx = perm[start:start + batch]
            share = -(-len(gidx) // world)
            idx = gidx[rank * share:(rank + 1) * share]
            xb, yb = xt.index_select(0, idx), yt.index_select(0, idx)
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss_sum += loss.detach() * len(idx)
            hits += (out.detach().argmax(1) == yb).sum()
            seen += len(idx)
        stats = torch.stack([loss_sum, hits, torch.tensor(float(seen))])
        dist.all_reduce(stats)  # epoch loss and accuracy over all ranks
        float(stats[0] / stats[2])
    return epoch


def speed_rank(rank: int, world: int, n: int, batches: list, repeats: int) -> dict:
    """Inside one rank: per global batch, {"times": {contender: seconds per epoch}}."""
    x, y = teacher_data(n)
    return {b: _alternate_ddp(x, y, b, rank, world, repeats) for b in batches}


def _alternate_ddp(x, y, batch: int, rank: int, world: int, repeats: int) -> dict:
    """Alternate bigtrain ddp and hand DDP epochs (order flipped every repeat)."""
    y_onehot = np.eye(CLASSES, dtype=np.float32)[y]
    hand = _hand_ddp(x, y, batch, rank, world)
    hand()  # warm-up (DDP rebuilds its buckets after the first steps)

    def bigtrain_epoch() -> float:
        model, task = _bigtrain_task(x, y_onehot, batch, epochs=2)
        return _run_engine(model, task, "ddp").stats["epoch_times"][1]

    def hand_epoch() -> float:
        t0 = time.perf_counter()
        hand()
        return time.perf_counter() - t0

    times = {"bigtrain ddp": [], "hand DDP": []}
    runs = [("bigtrain ddp", bigtrain_epoch), ("hand DDP", hand_epoch)]
    for r in range(repeats):
        for name, fn in (runs if r % 2 == 0 else runs[::-1]):
            dist.barrier()
            times[name].append(fn())
    return {"times": times, "threads": torch.get_num_threads()}


def _local_bytes(t) -> int:
    if t is None:
        return 0
    if hasattr(t, "to_local"):  # DTensor: only this rank's shard is resident
        t = t.to_local()
    return t.numel() * t.element_size()


def memory_rank(rank: int, world: int, strategy_names: list, batch: int) -> dict:
    """Inside one rank: for each strategy, one engine step; local bytes after the step."""
    return {name: _count_one_step(name, batch) for name in strategy_names}


def _count_one_step(strategy_name: str, batch: int) -> dict:
    """Local bytes of params, grads and Adam state right after one optimizer step."""
    x, y = teacher_data(batch)
    model, task = _bigtrain_task(x, np.eye(CLASSES, dtype=np.float32)[y], batch, epochs=1)
    counted: dict = {}
    make_optimizer = task.make_optimizer

    def counting_optimizer(params):
        opt = make_optimizer(params)

        def after_step(optimizer, args, kwargs):  # grads are still alive here
            params_ = [p for g in optimizer.param_groups for p in g["params"]]
            state = [v for s in optimizer.state.values() for k, v in s.items()
                     if torch.is_tensor(v) and k != "step"]
            steps = [s["step"] for s in optimizer.state.values() if torch.is_tensor(s.get("step"))]
            counted.update(params=sum(_local_bytes(p) for p in params_),
                           grads=sum(_local_bytes(p.grad) for p in params_),
                           optim=sum(_local_bytes(v) for v in state),
                           step_counters=sum(_local_bytes(v) for v in steps),
                           full_params=sum(p.numel() for p in task.module.parameters()))
        opt.register_step_post_hook(after_step)
        return opt
    task.make_optimizer = counting_optimizer
    _run_engine(model, task, strategy_name)
    return counted


def bench_speed(n: int, batches: list, repeats: int, launches: int) -> dict[int, float]:
    """Print one table per global batch and launch; returns batch -> the median over the
    launches of the step-time ratio bigtrain / hand. Each launch is a fresh set of rank
    processes: something fixed for a process's life (where its tensors land in memory)
    moves one contender's step time by several per cent in every repeat of that process
    (bench_fit's docstring), so only fresh processes average it out."""
    ratios: dict[int, list[float]] = {b: [] for b in batches}
    for launch in range(launches):
        if launches > 1:
            print(f"\n----- launch {launch + 1} of {launches} -----")
        results = run_ranks(speed_rank, WORLD, n, batches, repeats, timeout=600.0)
        for b in batches:
            ratios[b].append(_speed_table([r[b] for r in results], n, b, repeats))
    if launches > 1:
        print(f"\nmedian over {launches} launches (each launch's ratio in brackets)")
        for b, rs in ratios.items():
            print(f"  global batch {b}: bigtrain / hand step time {statistics.median(rs):.3f} "
                  f"({' / '.join(f'{r:.3f}' for r in rs)})")
    return {b: statistics.median(rs) for b, rs in ratios.items()}


def _speed_table(per_rank: list, n: int, batch: int, repeats: int) -> float:
    steps = -(-n // batch)
    rows = []
    for name in per_rank[0]["times"]:
        slowest = [max(r["times"][name][i] for r in per_rank) for i in range(repeats)]
        rows.append(Row(name, n, slowest))
    title = (f"ddp on {WORLD} ranks x {per_rank[0]['threads']} thread(s), global batch {batch} "
             f"({batch // WORLD}/rank), one epoch of {n:,} samples ({steps} steps)")
    ratios = print_table(title, rows, ratios=[("bigtrain ddp", "hand DDP")])
    for r in rows:
        print(f"  {r.name}: {r.median_s / steps * 1e3:.3f} ms/step (median)")
    return 1.0 / ratios["bigtrain ddp/hand DDP"]  # step-time ratio: inverse of the rates


def bench_memory(batch: int = 64) -> None:
    print(f"\nper-rank model-state memory after one Adam step, {WORLD} ranks (local shards)")
    print(f"  {'strategy':<9}{'params':>11}{'grads':>11}{'adam m,v':>11}{'total':>11}"
          f"{'B/param':>9}{'formula':>9}{'measured/formula':>18}")
    formula_per_param = {"ddp": ADAM_BYTES_PER_PARAM, "zero3": ADAM_BYTES_PER_PARAM / WORLD}
    per_rank = run_ranks(memory_rank, WORLD, list(formula_per_param), batch, timeout=300.0)
    for name, per_param in formula_per_param.items():
        for rank, c in enumerate(r[name] for r in per_rank):
            total = c["params"] + c["grads"] + c["optim"]
            formula = per_param * c["full_params"]
            print(f"  {name + ' r' + str(rank):<9}{c['params']:>11,}{c['grads']:>11,}"
                  f"{c['optim']:>11,}{total:>11,}{total / c['full_params']:>9.2f}"
                  f"{per_param:>9.1f}{total / formula:>18.3f}")
    c = per_rank[0]["ddp"]
    print(f"  ({c['full_params']:,} parameters; not counted: Adam's step counters, "
          f"{c['step_counters']} B, and DDP's gradient buckets)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run")
    parser.add_argument("--samples", type=int, default=None, help="dataset size")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (>= 5)")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="global batches")
    parser.add_argument("--launches", type=int, default=None,
                        help="fresh sets of rank processes, one after another (default 3; "
                             "1 with --quick); the ratio is their median")
    args = parser.parse_args(argv)
    n = args.samples or (2_048 if args.quick else 8_192)
    launches = args.launches or (1 if args.quick else 3)
    repeats = args.repeats or (4 if launches > 1 else 5 if args.quick else 7)
    batches = args.batches or ([256] if args.quick else [32, 256])
    print(f"bench_ddp: seed model {FEATURES}-{HIDDEN}-{CLASSES}, Adam, {WORLD} gloo ranks, "
          f"{repeats} repeats x {launches} launch(es)\n  {machine_line()} (parent process)")
    for batch, ratio in bench_speed(n, batches, repeats, launches).items():
        check_target(f"bigtrain/hand step time at global batch {batch}", ratio, 1.03,
                     higher_is_better=False)
    bench_memory()
    return 0


if __name__ == "__main__":
    sys.exit(main())
