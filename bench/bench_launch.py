"""Start-up cost of `fit(..., devices=2)`: workers forked from the preloaded fork server
against spawned ones (`BIGTRAIN_RANK_START=spawn`, how every launch started before).

Each start method runs in its own fresh interpreter, the two alternating (`--pairs`): a
small model (20-16-4, Adam, 512 samples, batch 64, one epoch, ddp on 2 ranks) so that the
call's time is its start-up and tear-down, not the training. The first call of a process
is reported apart (forked: it starts the fork server, which imports torch and bigtrain
once); the later calls give the median. "outside the epoch" is the call's wall time minus
its epoch's (`History.stats["epoch_times"]`): launching, joining the group, building the
model and optimizer on every rank, and collecting the result.

    python bench/bench_launch.py            # about a minute on 2 cores
    python bench/bench_launch.py --pairs 2 --calls 5
    python bench/bench_launch.py --quick  # 2 calls each
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import machine_line  # noqa: E402

METHODS = ("forkserver", "spawn")


def child(calls: int) -> None:
    """In a fresh interpreter: `calls` fit(devices=2) calls; print their times as JSON."""
    import warnings

    import numpy as np

    from bigtrain.layers import Dense, Input
    from bigtrain.models import Model
    warnings.simplefilter("ignore")  # the note that each call starts a fresh Adam
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 20), dtype=np.float32)
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 512)]
    inp = Input(shape=(20,))
    model = Model(inp, Dense(4, activation="softmax")(Dense(16, activation="relu")(inp)))
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        history = model.fit(x, y, epochs=1, batch_size=64, strategy="ddp", devices=2,
                            verbose=0)
        total = time.perf_counter() - t0
        out.append({"total": total, "outside": total - sum(history.stats["epoch_times"])})
    print("TIMES " + json.dumps(out), flush=True)


def run_child(method: str, calls: int) -> list[dict]:
    env = {**os.environ, "BIGTRAIN_RANK_START": method}
    proc = subprocess.run([sys.executable, __file__, "--child", "--calls", str(calls)],
                          capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} child failed:\n{proc.stdout}\n{proc.stderr}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("TIMES "))
    return json.loads(line[6:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1, help="processes of each method")
    parser.add_argument("--calls", type=int, default=4, help="fit calls in each process")
    parser.add_argument("--quick", action="store_true", help="2 calls in each process")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.calls = 2
    if args.calls < 2:
        parser.error("--calls must be at least 2 (the first call is reported apart)")
    if args.child:
        child(args.calls)
        return 0
    print(f"bench_launch: fit(devices=2) start-up, {args.pairs} process(es) per start method, "
          f"{args.calls} calls each\n  {machine_line()}")
    got: dict[str, list[list[dict]]] = {m: [] for m in METHODS}
    for i in range(args.pairs):  # alternate, the first method swapping each pair
        for method in (METHODS if i % 2 == 0 else METHODS[::-1]):
            got[method].append(run_child(method, args.calls))
    print(f"  {'start method':<12} {'first call s':>12} {'later calls s':>13} "
          f"{'outside the epoch s':>19}")
    later = {}
    for method, runs in got.items():
        first = statistics.median(r[0]["total"] for r in runs)
        later[method] = statistics.median(c["total"] for r in runs for c in r[1:])
        outside = statistics.median(c["outside"] for r in runs for c in r[1:])
        print(f"  {method:<12} {first:>12.2f} {later[method]:>13.2f} {outside:>19.2f}")
    print(f"  ratio later calls spawned / forked: {later['spawn'] / later['forkserver']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
