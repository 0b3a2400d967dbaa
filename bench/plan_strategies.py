"""The planner against measured runs, per strategy: step time and peak memory on 2 gloo ranks.

For a square MLP (an nn.Sequential the pipeline can cut; mean squared error) and a small
GPT (next-token cross-entropy), each strategy the planner estimates on a CPU host (ddp,
zero1, zero2, zero3, pipeline, tensor; fsdp_offload offloads to the host it already runs
on, so the planner skips it there) trains a few steps on 2 ranks with 1 torch thread
each, each strategy in fresh rank processes. Measured on every rank, the heavier rank's
figure shown:

    step ms    wall-clock median of the steps after the first two
    cpu ms     the same steps' process CPU time (all threads; waits for the other rank and
               the pipeline's idle time are not in it): steadier on a loaded host
    states MB  parameters + gradients + optimizer state the rank holds before its update
               (local shards, bigtrain.engine.record.local_state_bytes; a pipeline rank's
               of the whole model it built, as it keeps every layer)
    peak MB    the most malloc held for live blocks (glibc mallinfo2: every tensor is one)
               during the steps after the first two, sampled each time autograd saves or
               reads back a tensor and around each update, less what it held before the
               model was built and the data set: everything the rank keeps for training,
               the planner's parameters, gradients, optimizer state, activations and
               buffers, but also a step's temporaries, which the planner does not count

Beside each: the planner's figure on this host's measured 1-thread matmul FLOP/s, copy
bandwidth and kernel probe (`bench_scaling.host_spec`), gloo's collective costs measured
on 2 ranks of this host (`bigtrain.plan.collectives`), and the runtime's tensor plan, with
the error in percent (plan / measured - 1).
Not in run_all (1-4 minutes); `bench_scaling.py --only strategies` runs it too.

    python bench/plan_strategies.py            # both models
    python bench/plan_strategies.py --quick    # the MLP only
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import machine_line  # noqa: E402
from bigtrain.plan import DeviceSpec, plan  # noqa: E402
from bigtrain.plan.device import (CPU_COLLECTIVE_LATENCY, CPU_LOOPBACK_BANDWIDTH,  # noqa: E402
                                  host_memory_bytes)
from tests.dist import run_ranks  # noqa: E402

STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "pipeline", "tensor")
WORLD = 2
# (batch, samples): the MLP 4 x Linear(1536) (9.4 M parameters), the GPT 4 x 384 wide,
# vocab 4096, 64 tokens (10.3 M parameters)
CASES = {"mlp": (64, 64 * 8), "gpt": (8, 8 * 8)}


def build(kind: str):
    """(compiled bigtrain Model, x, y) of `kind` ("mlp" or "gpt"), seeded."""
    import bigtrain
    from bigtrain.losses import SparseCategoricalCrossentropy
    from bigtrain.models import Model
    from bigtrain.zoo import GPT, GPTConfig
    bigtrain.set_seed(0)
    batch, samples = CASES[kind]
    if kind == "mlp":
        layers = [m for _ in range(3) for m in (nn.Linear(1536, 1536), nn.ReLU())]
        model = Model(nn.Sequential(*layers, nn.Linear(1536, 1536)))  # a chain to cut
        model.compile(optimizer="adam", loss="mse")
        x = torch.randn(samples, 1536)
        return model, x, torch.randn(samples, 1536)
    model = Model(GPT(GPTConfig(vocab_size=4096, block_size=64, n_layer=4, n_head=6,
                                n_embd=384)))
    model.compile(optimizer="adam", loss=SparseCategoricalCrossentropy(from_logits=True))
    x = torch.randint(0, 4096, (samples, 64))
    return model, x, torch.roll(x, -1, 1)


class _Malloc:
    """Bytes malloc holds for live allocations now (glibc's mallinfo2: in-use heap chunks +
    mapped blocks), and the most seen by `sample` since `reset`. Every tensor's storage is a
    malloc'd block, so this sees what a rank really holds: parameters, gradients, optimizer
    state, activations, collective buffers, and the temporaries of a step."""

    class _Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
                                                     "hblkhd", "usmblks", "fsmblks",
                                                     "uordblks", "fordblks", "keepcost")]

    def __init__(self):
        libc = ctypes.CDLL("libc.so.6")
        self._fn = libc.mallinfo2
        self._fn.restype = _Malloc._Info
        self.peak = 0

    def now(self) -> int:
        info = self._fn()
        return info.uordblks + info.hblkhd

    def sample(self, *_):
        self.peak = max(self.peak, self.now())

    def reset(self):
        self.peak = self.now()


def _probe(model, name: str, heap: _Malloc, wall: list, cpu: list, held: list):
    """A callback that times each step (wall, CPU), samples `heap` during it and records the
    model-state bytes before each update."""
    from bigtrain.callbacks import Callback
    from bigtrain.engine.record import local_state_bytes
    # a sample each time autograd saves a tensor (forward) or reads it back (backward), and
    # around each update: the peaks of a step lie among them
    hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: (heap.sample(), t)[1],
                                                     lambda t: (heap.sample(), t)[1])

    class Probe(Callback):
        main_process_only = False

        def on_train_begin(self, logs=None):
            _, module = self.model._live
            if name == "pipeline":  # every rank holds the whole model it built, its stage
                module = model.net  # trains (and keeps gradients and state for) a part

            def before(opt, *_):  # returns None: the step's arguments stay as they are
                heap.sample()
                held.append(sum(local_state_bytes(module, opt)))
            model.optimizer.register_step_pre_hook(before)
            model.optimizer.register_step_post_hook(lambda *_: heap.sample())

        def on_train_batch_begin(self, batch, logs=None):
            if batch == 2:  # setup and the first steps' one-off allocations are behind
                heap.reset()
            hooks.__enter__()
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, batch, logs=None):
            wall.append(time.perf_counter() - self.t0)
            cpu.append(time.process_time() - self.c0)
            hooks.__exit__(None, None, None)
    return Probe()


def _measure(rank, world_size, kind: str, name: str):
    """(wall seconds, CPU seconds of one step, states bytes at the update, peak live bytes
    over the model's own: the most malloc held during the timed steps, less what it held
    before the model was built) of one rank."""
    from bigtrain.api.training import make_task, prepare_data
    from bigtrain.engine.loop import train
    from bigtrain.engine.task import FitConfig
    from bigtrain.parallel import resolve_strategy
    from bigtrain.parallel.base import DistEnv
    batch = CASES[kind][0]
    gc.collect()
    heap = _Malloc()
    base = heap.now()  # before the model: its parameters count, as in the plan
    model, x, y = build(kind)
    data = prepare_data(model, x, y)
    base += x.nbytes + y.nbytes  # the data set is not the plan's to count
    task = make_task(model, data, None, FitConfig(epochs=1, batch_size=batch, verbose=0,
                                                  shuffle=False), [])
    strategy = resolve_strategy(name)
    strategy.setup(DistEnv(rank=rank, world_size=world_size, local_rank=rank,
                           local_world_size=world_size))
    wall, cpu, held = [], [], []
    task.callbacks = [_probe(model, name, heap, wall, cpu, held)]
    train(task, strategy, model)
    strategy.teardown()
    return (statistics.median(wall[2:]), statistics.median(cpu[2:]), max(held, default=0),
            heap.peak - base)


def predict(kind: str, spec: DeviceSpec) -> dict:
    """strategy -> the planner's StrategyEstimate for `kind` on 2 ranks of `spec`."""
    from bigtrain.parallel.tensor_plan import planned_styles
    model, x, _ = build(kind)
    net = model.net
    p = plan(net, devices=WORLD, batch_size=CASES[kind][0], device=spec,
             example_input=x[:1], tensor_styles=planned_styles(net, WORLD))
    return {e.strategy: e for e in p.estimates}


def rank_spec() -> DeviceSpec:
    """One rank of this host: 1 torch thread on its own core (2 ranks, 2+ cores), measured,
    with gloo's collective costs measured on 2 ranks of it (bigtrain.plan.collectives)."""
    from bench.bench_scaling import host_spec
    from bigtrain.plan.collectives import measure_collectives
    host = host_spec()
    return DeviceSpec("cpu", host_memory_bytes() / WORLD, host.flops, CPU_LOOPBACK_BANDWIDTH,
                      memory_bandwidth=host.memory_bandwidth, latency=CPU_COLLECTIVE_LATENCY,
                      kernels=host.kernels, collectives=measure_collectives(WORLD))


def bench_kind(kind: str, spec: DeviceSpec, names=STRATEGIES) -> list[dict]:
    """Measured and predicted rows of every strategy in `names` for model `kind`."""
    est = predict(kind, spec)
    rows = []
    for name in names:
        per_rank = run_ranks(_measure, WORLD, kind, name, timeout=240)
        e = est[name]
        rows.append({"model": kind, "strategy": name,
                     "step_s": max(r[0] for r in per_rank),
                     "cpu_s": max(r[1] for r in per_rank), "plan_s": e.time.total,
                     "states": max(r[2] for r in per_rank),
                     "plan_states": e.memory.model_states,
                     "peak": max(r[3] for r in per_rank), "plan_peak": e.memory.device_total,
                     "time_parts": e.time, "memory_parts": e.memory})
    return rows


def print_rows(rows: list[dict]) -> None:
    print(f"\n{rows[0]['model']}: 2 gloo ranks, 1 thread each; planner beside each measured "
          "figure (err = plan / measured - 1)")
    print(f"  {'strategy':<9} {'step ms':>8} {'cpu ms':>8} {'plan ms':>8} {'err':>6} {'states MB':>10} "
          f"{'plan MB':>8} {'err':>6} {'peak MB':>8} {'plan MB':>8} {'err':>6}")
    for r in rows:
        print(f"  {r['strategy']:<9} {r['step_s'] * 1e3:>8.1f} {r['cpu_s'] * 1e3:>8.1f} {r['plan_s'] * 1e3:>8.1f} "
              f"{r['plan_s'] / r['step_s'] - 1:>+6.0%} {r['states'] / 1e6:>10.1f} "
              f"{r['plan_states'] / 1e6:>8.1f} {r['plan_states'] / r['states'] - 1:>+6.0%} "
              f"{r['peak'] / 1e6:>8.1f} {r['plan_peak'] / 1e6:>8.1f} "
              f"{r['plan_peak'] / r['peak'] - 1:>+6.0%}", flush=True)
    for r in rows:
        t, m = r["time_parts"], r["memory_parts"]
        print(f"  plan {r['strategy']:<9} ms: compute {t.compute * 1e3:.1f} comm "
              f"{t.comm * 1e3:.1f} copies {t.copies * 1e3:.1f} bubble {t.bubble * 1e3:.1f} "
              f"update {t.update * 1e3:.1f} | "
              f"MB: params {m.params / 1e6:.1f} grads {m.grads / 1e6:.1f} optim "
              f"{m.optimizer / 1e6:.1f} acts {m.activations / 1e6:.1f} buffers "
              f"{m.comm_buffers / 1e6:.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the MLP only")
    ap.add_argument("--only", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"plan_strategies: {machine_line()}")
    spec = rank_spec()
    for kind in ("mlp",) if args.quick else ("mlp", "gpt"):
        print_rows(bench_kind(kind, spec, args.only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
