"""Run every benchmark script in turn, each in its own process, and print their tables.

    python bench/run_all.py            # full runs (`make bench`), a few minutes each
    python bench/run_all.py --quick    # short runs, under a minute each
    python bench/run_all.py --only bench_fit

Scripts: bench_fit, bench_fit_gpt, bench_ddp, bench_scaling and bench_pipeline first (the
figures of bench/RESULTS.md's summary), then every other `bench_*.py` here in name order.
`--quick` is passed only to scripts that accept it. Each script is a fresh interpreter so
thread settings and process groups of one cannot affect the next. The exit status is
non-zero when a script fails, not when a speed target is missed (timings are reported,
not enforced).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FIRST = ["bench_fit", "bench_fit_gpt", "bench_ddp", "bench_scaling", "bench_pipeline"]
TIMEOUT_S = 600  # per script, each sized for < 5 min: a hung collective must not hang the run


def scripts() -> list[str]:
    """Names (without `.py`) of the bench scripts, in the order they run."""
    found = sorted(f[:-3] for f in os.listdir(HERE) if f.startswith("bench_") and f.endswith(".py"))
    return [s for s in FIRST if s in found] + [s for s in found if s not in FIRST]


def accepts_quick(name: str) -> bool:
    with open(os.path.join(HERE, f"{name}.py"), encoding="utf-8") as f:
        return '"--quick"' in f.read()


def run_script(name: str, extra: list[str]) -> int:
    """Run bench/<name>.py from the repository root; returns its exit status.

    Args:
        name: script name without `.py`.
        extra: arguments passed through (e.g. ["--quick"]).
    """
    cmd = [sys.executable, os.path.join(HERE, f"{name}.py"), *extra]
    print(f"\n===== {name} {' '.join(extra)} =====", flush=True)
    t0 = time.perf_counter()
    # own process group, so a timeout also ends the ranks the script spawned
    proc = subprocess.Popen(cmd, cwd=os.path.dirname(HERE), start_new_session=True)
    try:
        code = proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        print(f"{name}: did not finish within {TIMEOUT_S}s", flush=True)
        code = 124
    print(f"===== {name}: exit {code}, {time.perf_counter() - t0:.0f}s =====", flush=True)
    return code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs")
    parser.add_argument("--only", nargs="+", choices=scripts(), help="run only these scripts")
    args = parser.parse_args(argv)
    failed, t0 = [], time.perf_counter()
    for name in args.only or scripts():
        extra = ["--quick"] if args.quick and accepts_quick(name) else []
        if run_script(name, extra) != 0:
            failed.append(name)
    print(f"all scripts: {time.perf_counter() - t0:.0f}s, 1-min load at the end "
          f"{os.getloadavg()[0]:.1f}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
