"""Train a Wide & Deep CTR model (1M-row embedding table) through parameter servers.

Of 4 processes the last is a parameter server holding the weights and Adagrad state; the
other 3 are workers that pull only the embedding rows their batch needs and push back only
those rows' gradients. The chief worker prints progress and the test AUC at the end.

    python examples/ctr_parameter_server.py                      # BSP, 4 local processes
    python examples/ctr_parameter_server.py --mode ssp --staleness 2
    python examples/ctr_parameter_server.py --mode asp --servers 2 --processes 5
    torchrun --nproc-per-node 4 examples/ctr_parameter_server.py  # same, under torchrun

This script drives the strategy with its own small loop; `model.fit(..., strategy=
ParameterServer(...), devices=4)` runs the same steps.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from bigtrain.data.ctr import CTRConfig, make_ctr
from bigtrain.parallel.base import DistEnv, StepBatch
from bigtrain.parallel.parameter_server import ParameterServer
from bigtrain.zoo.wide_and_deep import WideAndDeep


def _loss(logits, clicks, sample_weight):
    return F.binary_cross_entropy_with_logits(logits, clicks)


def _worker_batch(data, lo: int, hi: int, index: int, count: int) -> StepBatch:
    """Worker `index`'s contiguous share of global batch rows [lo, hi) (one micro-batch)."""
    a = lo + (hi - lo) * index // count
    b = lo + (hi - lo) * (index + 1) // count
    micro = [((data.ids[a:b], data.dense[a:b]), data.clicks[a:b], None)]
    return StepBatch(micro, [(b - a) / (hi - lo) * count])


def run(rank: int, world_size: int, args) -> None:
    torch.manual_seed(0)
    data = make_ctr(CTRConfig(num_samples=args.samples, num_ids=args.ids, seed=0))
    train, test = data.split(0.8)
    strategy = ParameterServer(servers=args.servers, mode=args.mode, staleness=args.staleness)
    strategy.validate(world_size, args.batch_size)
    strategy.setup(DistEnv(rank=rank, world_size=world_size))
    module = strategy.setup_module(WideAndDeep(args.ids, num_fields=8, num_dense=4))
    opt = strategy.setup_optimizer(module, lambda ps: torch.optim.Adagrad(ps, lr=args.lr))
    if strategy.is_service_rank():
        strategy.serve()
        return
    index, count = strategy.data_shard()
    n, t0, step = len(train.ids), time.perf_counter(), 0
    for epoch in range(args.epochs):
        for lo in range(0, n - args.batch_size + 1, args.batch_size):
            batch = _worker_batch(train, lo, lo + args.batch_size, index, count)
            _, loss = strategy.train_step(module, opt, batch, _loss, contextlib.nullcontext)
            step += 1
            if step % args.log_every == 0:
                mean = strategy.all_reduce(loss.detach().clone()) / count
                if rank == 0:
                    print(f"epoch {epoch} step {step}: loss {mean.item():.4f} "
                          f"({step * args.batch_size / (time.perf_counter() - t0):.0f} "
                          "samples/s)", flush=True)
    state = strategy.full_state_dict(module)
    stats = strategy.stats()
    strategy.teardown()
    if rank == 0:
        model = WideAndDeep(args.ids, num_fields=8, num_dense=4)
        model.load_state_dict(state)
        with torch.no_grad():
            scores = model(test.ids, test.dense).squeeze(1)
        auc = roc_auc_score(test.clicks.squeeze(1).numpy(), scores.numpy())
        oracle = roc_auc_score(test.clicks.squeeze(1).numpy(), test.oracle_logits.numpy())
        print(f"test AUC {auc:.4f} (oracle {oracle:.4f}); staleness max "
              f"{stats['all_workers_staleness_max']}; pushed "
              f"{stats['bytes_pushed'] / step / 1e3:.1f} kB/step (a dense push would be "
              f"{sum(p.numel() for p in model.parameters()) * 4 / 1e6:.1f} MB)")


def _spawned(rank: int, world_size: int, store_path: str, args) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    store = dist.FileStore(store_path, world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size,
                            timeout=timedelta(minutes=10))
    try:
        run(rank, world_size, args)
    finally:
        dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", default="bsp", choices=["bsp", "asp", "ssp"])
    p.add_argument("--staleness", type=int, default=2)
    p.add_argument("--servers", type=int, default=1)
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--ids", type=int, default=1_000_000)
    p.add_argument("--samples", type=int, default=200_000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--log-every", type=int, default=50)
    args = p.parse_args()
    if "RANK" in os.environ:  # started by torchrun
        dist.init_process_group("gloo")
        try:
            run(dist.get_rank(), dist.get_world_size(), args)
        finally:
            dist.destroy_process_group()
        return
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_spawned, args=(args.processes, os.path.join(tmp, "store"), args),
                 nprocs=args.processes)


if __name__ == "__main__":
    main()
