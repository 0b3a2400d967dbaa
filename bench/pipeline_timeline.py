"""Per-micro-batch timeline of a pipeline step, for bench_pipeline: what each rank did when.

On each rank, wrappers record one event per forward chunk, backward chunk, loss, send/recv
post and send/recv wait: (kind, micro-batch, start, end, thread CPU seconds), with
`time.perf_counter` (CLOCK_MONOTONIC: one clock for every process of this host, so the
ranks' events line up) and `time.thread_time` (the seconds this thread held a core: a chunk
whose wall time exceeds it was descheduled by other programs).

`replay(timelines)` rebuilds the step with the measured chunk durations and nothing else:
each op starts when its rank finished the previous op and its input is ready (a forward
needs the previous stage's forward of that micro-batch, a backward the next stage's
backward), with no send/recv cost and no scheduler overhead. Its bubble is what this
schedule gives with these chunk times; the measured bubble above it is communication and
overhead, and the replay's own distance from (p-1)/(m+p-1) comes from unequal chunks.
`replay(..., equalize=True)` scales each rank's chunks so every stage's step total is the
ranks' mean: what is left of the distance then is the schedule's order with unequal forward
and backward chunks, not one stage doing more work than the other (the first stage of a
chain skips its input's gradient, so its backward is cheaper than the next stage's).
"""
from __future__ import annotations

import functools
import time

COMPUTE = ("F", "B", "loss")  # the kinds that are a stage's work (the bubble's "busy")


class Recorder:
    """Collects events on one rank while `on`; `steps` holds one list per timed step."""

    def __init__(self):
        self.on = False
        self.events: list[tuple] = []
        self.steps: list[dict] = []

    def wrap(self, fn, kind: str, mb_arg: bool = True):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if not self.on:
                return fn(*args, **kwargs)
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                mb = args[0] if mb_arg and args and isinstance(args[0], int) else -1
                self.events.append((kind, mb, t0, time.perf_counter(),
                                    time.thread_time() - c0))
        return timed

    def begin(self) -> None:
        self.events, self.on = [], True

    def end(self, t0: float, t1: float) -> None:
        self.on = False
        self.steps.append({"start": t0, "end": t1, "events": self.events})


def attach(rt, recorder: Recorder) -> None:
    """Wrap the chunks of `rt`'s stages, its schedule's loss and torch's p2p helpers."""
    from torch.distributed.pipelining import schedules
    for st in rt.pstages:
        # a stage that waits for its early-posted receives inside forward_one_chunk
        # (bigtrain.parallel.early_recv) names its compute apart: the wait is not busy
        fwd, bwd = [name for name, _ in getattr(st, "compute_chunks", ())][:2] or \
            ("forward_one_chunk", "backward_one_chunk")
        setattr(st, fwd, recorder.wrap(getattr(st, fwd), "F"))
        setattr(st, bwd, recorder.wrap(getattr(st, bwd), "B"))
        if hasattr(st, "_arrived"):
            st._arrived = recorder.wrap(st._arrived, "wait", mb_arg=False)
            st._post = recorder.wrap(st._post, "post", mb_arg=False)
    sched = rt.schedule
    sched._compute_loss = recorder.wrap(sched._compute_loss, "loss", mb_arg=False)
    if not getattr(schedules, "_bench_wrapped", False):  # module functions: once per process
        schedules._batch_p2p = recorder.wrap(schedules._batch_p2p, "post", mb_arg=False)
        schedules._wait_batch_p2p = recorder.wrap(schedules._wait_batch_p2p, "wait",
                                                  mb_arg=False)
        schedules._bench_wrapped = True


def breakdown(step: dict) -> dict:
    """Seconds of one rank's step by kind: busy (F + B + loss), wait (blocked in a p2p
    wait), post (posting p2p ops), overhead (the rest: the schedule's Python), and the
    part of busy spent descheduled (chunk wall - thread CPU)."""
    wall = step["end"] - step["start"]
    sums = {k: 0.0 for k in ("F", "B", "loss", "post", "wait")}
    desched = 0.0
    for kind, _, t0, t1, cpu in step["events"]:
        sums[kind] += t1 - t0
        if kind in COMPUTE:
            desched += max(0.0, (t1 - t0) - cpu)
    busy = sums["F"] + sums["B"] + sums["loss"]
    return {"wall": wall, "busy": busy, "wait": sums["wait"], "post": sums["post"],
            "overhead": wall - busy - sums["wait"] - sums["post"], "descheduled": desched,
            "bubble": 1.0 - busy / wall}


def _ops(step: dict, cpu: bool) -> list[tuple[str, int, float]]:
    """(kind, micro-batch, seconds) of a rank's compute ops in order (wall seconds, or the
    thread's CPU seconds when `cpu`); the loss joins the forward before it (it runs right
    after the last stage's forward of that micro-batch)."""
    ops: list[list] = []
    for kind, mb, t0, t1, cpu_s in step["events"]:
        dur = cpu_s if cpu else t1 - t0
        if kind == "loss" and ops:
            ops[-1][2] += dur
        elif kind in ("F", "B"):
            ops.append([kind, mb, dur])
    return [tuple(o) for o in ops]


def replay(steps_by_rank: list[dict], cpu: bool = False, equalize: bool = False) -> float:
    """Mean bubble over the ranks of the step rebuilt from its measured chunk durations
    with free communication and no overhead (module docstring). Rank r holds stage r.
    With `cpu`, each chunk lasts its thread CPU time: the chunks as they would run with a
    core to themselves (no other program taking it mid-chunk). With `equalize`, every
    stage's chunks are scaled to the ranks' mean step total (module docstring)."""
    p = len(steps_by_rank)
    ops = [_ops(s, cpu) for s in steps_by_rank]
    if equalize:
        totals = [sum(d for _, _, d in o) for o in ops]
        mean = sum(totals) / p
        ops = [[(k, mb, d * mean / t) for k, mb, d in o] for o, t in zip(ops, totals)]
    done: dict[tuple, float] = {}  # (kind, stage, mb) -> end time
    clock, pos = [0.0] * p, [0] * p
    while any(pos[r] < len(ops[r]) for r in range(p)):
        progressed = False
        for r in range(p):
            while pos[r] < len(ops[r]):
                kind, mb, dur = ops[r][pos[r]]
                dep = ("F", r - 1, mb) if kind == "F" and r > 0 else \
                      ("B", r + 1, mb) if kind == "B" and r < p - 1 else None
                if dep is not None and dep not in done:
                    break  # wait for the other rank's op
                start = max(clock[r], done.get(dep, 0.0))
                clock[r] = done[kind, r, mb] = start + dur
                pos[r] += 1
                progressed = True
        if not progressed:
            raise RuntimeError("replay: the recorded op orders deadlock; timeline incomplete")
    wall = max(clock)
    busy = [sum(d for _, _, d in o) for o in ops]
    return sum(1.0 - b / wall for b in busy) / p
