"""How cost grows: step time vs parameters, model-state bytes vs ranks, parameter-server
throughput vs workers, each measured point beside the planner's prediction.

1. size: one training step (forward, backward, fused Adam) of the zoo MLP (4 square layers) and the
   zoo GPT (vocab 4096, 128 tokens) from about 1M to 100M parameters on one rank, one torch
   thread. The sizes of a family alternate inside every repeat (rotated order), each timed
   step after an untimed one of the same model (as in training, where the step before was
   the same model's), medians of the repeats. A least-squares fit of log(time) on
   log(params) gives the exponent; the slope between neighbouring sizes shows where it
   departs. Beside each point: the planner's step time (`plan(..., devices=1)` on this
   host's measured 1-thread matmul FLOP/s and copy bandwidth, both by CPU time, with a
   kernel probe: bigtrain.plan.kernels) and its activation bytes against the bytes autograd
   really saved (a saved-tensor hook over one forward, parameters excluded, each storage
   once).
2. zero: per-rank bytes of parameters + gradients + optimizer state for zero1, zero2, zero3
   on 1..4 ranks, summed from the running strategy's local tensors (a DTensor's local shard,
   the local optimizer's state) after one step, before the gradients are freed; the heaviest
   rank against the ZeRO formula (`bigtrain.plan.model_state_bytes`).
3. ps: parameter-server throughput (samples/s of all workers) with 1, 2, 3 equal workers
   computing for real (no sleeps), 1 and 2 servers, BSP, beside the planner's "ps" figure.

    python bench/bench_scaling.py               # all three, a few minutes; writes the PNG
    python bench/bench_scaling.py --quick       # smaller sizes and fewer repeats
    python bench/bench_scaling.py --only zero ps
    python bench/bench_scaling.py --only strategies   # bench/plan_strategies.py: the planner's
                                  # time and peak memory per strategy against 2 ranks' runs
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import machine_line  # noqa: E402
from bigtrain.plan import DeviceSpec, plan  # noqa: E402
from bigtrain.plan.kernels import KernelProbe  # noqa: E402
from bigtrain.zoo.gpt import GPT, GPTConfig, gpt_loss  # noqa: E402
from bigtrain.zoo.mlp import MLP  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MLP_BATCH = 64
GPT_BATCH, GPT_TOKENS = 2, 128
# (width) of a 4-layer square MLP: about 4 w^2 parameters, 1M .. 100M
MLP_WIDTHS = [500, 880, 1600, 2800, 5000]
# (layers, width) of a GPT with vocab 4096 and 128 tokens: 1.3M .. 105M parameters
GPT_SHAPES = [(4, 128), (4, 256), (6, 384), (6, 640), (8, 1024)]


def mlp_case(width: int):
    """(model, one step's inputs, loss) of the square MLP at `width`."""
    torch.manual_seed(0)
    model = MLP(width, [width] * 3, width)
    x, y = torch.randn(MLP_BATCH, width), torch.randn(MLP_BATCH, width)
    return model, x, lambda out: F.mse_loss(out, y)


def gpt_case(shape):
    layers, width = shape
    cfg = GPTConfig(vocab_size=4096, block_size=GPT_TOKENS, n_layer=layers,
                    n_head=max(1, width // 64), n_embd=width)
    torch.manual_seed(0)
    model = GPT(cfg)
    idx = torch.randint(0, cfg.vocab_size, (GPT_BATCH, GPT_TOKENS))
    return model, idx, lambda out: gpt_loss(out, idx)


def saved_activation_bytes(model, x, loss_of) -> int:
    """Bytes autograd saves for backward over one forward: every saved tensor's storage
    once, parameters excluded (they are model states, not activations)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params and s.device.type != "meta":
            seen[s.data_ptr()] = s.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_of(model(x))
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def bench_size(family: str, shapes, repeats: int, spec: DeviceSpec) -> list[dict]:
    """Median step seconds per size (sizes alternate in each repeat) and the planner's view."""
    make = mlp_case if family == "mlp" else gpt_case
    cases = [make(s) for s in shapes]
    # fused Adam: what bigtrain's "adam" runs on plain CPU tensors (one pass over memory)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-4, fused=True) for m, _, _ in cases]

    def step(i):
        model, x, loss_of = cases[i]
        t0, c0 = time.perf_counter(), time.process_time()
        loss_of(model(x)).backward()
        opts[i].step()
        opts[i].zero_grad(set_to_none=True)
        return time.perf_counter() - t0, time.process_time() - c0
    for i in range(len(cases)):  # warm-up: allocator, Adam state
        step(i)
    times = [[] for _ in cases]
    for r in range(repeats):
        order = list(range(len(cases)))
        for i in order[r % len(order):] + order[:r % len(order)]:
            step(i)  # untimed: training runs a model's steps back to back, so a timed step
            times[i].append(step(i))  # finds its own tensors in the caches, not another's
    rows = []
    for (model, x, loss_of), both, shape in zip(cases, times, shapes):
        t, cpu = [w for w, _ in both], [c for _, c in both]
        n = sum(p.numel() for p in model.parameters())
        batch = x.shape[0]
        example = x[:1]
        p = plan(model, devices=1, batch_size=batch, device=spec, example_input=example,
                 seq_len=GPT_TOKENS if family == "gpt" else None).get("single")
        rows.append({"family": family, "shape": shape, "params": n,
                     "step_s": statistics.median(cpu), "wall_s": statistics.median(t),
                     "plan_update_s": p.time.update,
                     "spread": (max(cpu) - min(cpu)) / statistics.median(cpu),
                     "plan_s": p.time.total, "plan_compute_s": p.time.compute,
                     "act_bytes": saved_activation_bytes(model, x, loss_of),
                     "plan_act_bytes": p.memory.activations})
    cases.clear()  # the models and their Adam state: freed before the next family
    opts.clear()
    return rows


def fit_exponent(rows: list[dict]) -> float:
    """Slope of log(step time) over log(parameters) (least squares)."""
    return float(np.polyfit(np.log([r["params"] for r in rows]),
                            np.log([r["step_s"] for r in rows]), 1)[0])


def print_size(rows: list[dict]) -> None:
    fam = rows[0]["family"]
    print(f"\n{fam}: step time vs parameters (1 thread; Adam; "
          f"{'batch %d' % MLP_BATCH if fam == 'mlp' else 'batch %d x %d tokens' % (GPT_BATCH, GPT_TOKENS)})")
    print("  step ms: CPU time of the process per step (1 thread: time it was on a core), "
          "median; wall: the same steps' wall-clock median")
    print(f"  {'shape':>10} {'params':>11} {'step ms':>9} {'wall ms':>9} {'spread':>7} {'local slope':>11} "
          f"{'plan ms':>9} {'err':>6} {'acts MB':>8} {'plan MB':>8} {'err':>6}")
    prev = None
    for r in rows:
        slope = "" if prev is None else f"{np.log(r['step_s'] / prev['step_s']) / np.log(r['params'] / prev['params']):.2f}"
        print(f"  {str(r['shape']):>10} {r['params']:>11,} {r['step_s'] * 1e3:>9.1f} "
              f"{r['wall_s'] * 1e3:>9.1f} {r['spread']:>6.0%} {slope:>11} {r['plan_s'] * 1e3:>9.1f} "
              f"{r['plan_s'] / r['step_s'] - 1:>+6.0%} {r['act_bytes'] / 1e6:>8.1f} "
              f"{r['plan_act_bytes'] / 1e6:>8.1f} {r['plan_act_bytes'] / r['act_bytes'] - 1:>+6.0%}")
        prev = r
    print(f"  fitted exponent (time ~ params^k): k = {fit_exponent(rows):.2f}")


def _best_cpu_seconds(fn, repeats: int) -> float:
    """Least process CPU time of `repeats` calls (one thread: the time it held a core, so
    other programs' load does not enter)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        c0 = time.process_time()
        fn()
        best = min(best, time.process_time() - c0)
    return best


def host_spec() -> DeviceSpec:
    """This host for one 1-thread rank: fp32 matmul FLOP/s (1024^3) and memory bytes/s
    (a 256 MB copy: read + write), both by CPU time, best of 5, and a kernel probe."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    flops = 2 * 1024 ** 3 / _best_cpu_seconds(lambda: torch.mm(a, b), 5)
    src = torch.empty(256 * 2 ** 20, dtype=torch.uint8)
    dst = torch.empty_like(src)
    mem = 2 * src.numel() / _best_cpu_seconds(lambda: dst.copy_(src), 5)
    # the planner times the models' own kernels on this host against that peak
    return DeviceSpec("cpu", 8e9, flops, mem / 2, memory_bandwidth=mem, latency=0.0,
                      kernels=KernelProbe(peak_flops=flops, stream_bandwidth=mem))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="sizes up to ~30M, fewer repeats")
    ap.add_argument("--only", nargs="+", choices=["size", "zero", "ps", "strategies"],
                    default=["size", "zero", "ps"])
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--png", default=os.path.join(HERE, "scaling.png"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    repeats = args.repeats or (3 if args.quick else 5)
    print(f"bench_scaling: {machine_line()}")
    results: dict = {}
    if "size" in args.only:
        spec = host_spec()
        print(f"host, 1 thread, by CPU time: matmul {spec.flops / 1e9:.1f} GFLOP/s, memory "
              f"{spec.memory_bandwidth / 1e9:.1f} GB/s (copy, read + write)")
        cut = 4 if args.quick else 5
        results["size"] = {}
        for fam, shapes in (("mlp", MLP_WIDTHS[:cut]), ("gpt", GPT_SHAPES[:cut])):
            rows = bench_size(fam, shapes, repeats, spec)
            print_size(rows)
            results["size"][fam] = rows
    if "zero" in args.only or "ps" in args.only:
        from bench.scaling_ranks import bench_ps, bench_zero
        if "zero" in args.only:
            results["zero"] = bench_zero()
        if "ps" in args.only:
            results["ps"] = bench_ps(rounds=1 if args.quick else 2)
    if "strategies" in args.only:  # not by default: 1-4 minutes of its own
        from bench.plan_strategies import main as strategies
        strategies(["--quick"] if args.quick else [])
    if not results:
        return 0
    from bench.scaling_plot import plot
    plot(results, args.png)
    print(f"\nplot: {os.path.relpath(args.png)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
