"""What any p = 2 pipeline over gloo pays on this host, measured without bigtrain: a
hand-written GPipe or 1F1B step with timed chunks, one transfer's one-way time (half a round trip)
and the kernel's own cost of a loopback send. bench_pipeline prints them beside bigtrain's
rows; see its docstring."""
from __future__ import annotations

import os
import statistics
import time

import torch

from tests.dist import run_ranks  # the project's spawn helper


def hold(seconds: float, kind: str) -> None:
    """Keep this thread busy on its core ("spin") or off it ("sleep") for `seconds`."""
    if kind == "sleep":
        time.sleep(seconds)
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The pipeline bench's loss, for bigtrain's rows and the hand-written GPipe alike."""
    return ((out - target) ** 2).mean()


def schedule_order(schedule: str, rank: int, m: int) -> list[tuple[str, int]]:
    """("F" or "B", micro-batch) in the order rank `rank` of a p = 2 pipeline runs them, as
    torch's ScheduleGPipe and Schedule1F1B do: gpipe, every forward then every backward;
    1f1b, (2 - rank) forwards first, then one backward and one forward in turn, then the
    backwards left.

    Example:
        >>> schedule_order("1f1b", 0, 3)
        [('F', 0), ('F', 1), ('B', 0), ('F', 2), ('B', 1), ('B', 2)]
    """
    if schedule == "gpipe":
        return [("F", k) for k in range(m)] + [("B", k) for k in range(m)]
    warm = min(m, 2 - rank)
    order = [("F", k) for k in range(warm)]
    for k in range(m):
        order.append(("B", k))
        if warm + k < m:
            order.append(("F", warm + k))
    return order


def _hand_pipeline(rank, world, m, hidden, micro_rows, chunk_ms, how, warmup, steps,
                   loss=False, schedule="gpipe", one_group=False):
    """A hand-written p = 2 pipeline step (`schedule`: "gpipe" or "1f1b", see
    `schedule_order`) over torch.distributed isend/irecv with the timed chains' chunks: every
    receive posted at the step's start, each forward `chunk_ms` and each backward twice
    that, on both ranks alike (what is sent is allocated before the step: a fresh 256 KiB
    buffer costs 0.2 ms of page faults here, which made one rank's chunks longer than the
    other's). With `loss`, the last rank also computes the bench's loss on each
    micro-batch's activations, mean((a - t)^2) with autograd, after its forward and
    backpropagates it before its backward, timed as busy as bigtrain times its loss; it
    sends that gradient back. Activations and gradients travel on two groups of the same
    ranks, as bigtrain's do (bigtrain.parallel.early_recv); `one_group` puts both on one.
    Per timed step (entry, exit, busy seconds, seconds of each isend call) of this rank."""
    torch.set_num_threads(1)
    peer, f = 1 - rank, chunk_ms / 1e3
    acts = torch.distributed.new_group([0, 1])
    grads = acts if one_group else torch.distributed.new_group([0, 1])
    target = torch.randn(micro_rows, hidden)
    order = schedule_order(schedule, rank, m)
    out = []
    for i in range(warmup + steps):
        bufs = [torch.empty(micro_rows, hidden) for _ in range(m)]
        src = torch.randn(micro_rows, hidden)  # rank 0's activations (rank 1 sends bufs[k])
        torch.distributed.barrier()
        t0, busy, sends, posts = time.perf_counter(), 0.0, [], []
        # rank 1 receives activations, rank 0 gradients
        recvs = [torch.distributed.irecv(b, peer, group=acts if rank else grads) for b in bufs]
        held = {}  # the last rank's (activations, loss) per micro-batch, with `loss`
        for op, k in order:
            if (op == "F") == (rank == 1):  # this chunk's input comes from the other rank
                recvs[k].wait()
            c = time.perf_counter()
            if op == "F":
                hold(f, how)
                if rank == 1 and loss:
                    a = bufs[k].requires_grad_()
                    held[k] = (a, mse(a, target))
            else:
                if k in held:
                    held[k][1].backward()
                hold(2 * f, how)
            busy += time.perf_counter() - c
            if (op == "F") == (rank == 0):  # its output goes to the other rank
                sent = src if op == "F" else (held[k][0].grad if k in held else bufs[k])
                c = time.perf_counter()
                sends.append(torch.distributed.isend(sent, peer,
                                                     group=acts if op == "F" else grads))
                posts.append(time.perf_counter() - c)
        for w in sends:
            w.wait()
        if i >= warmup:
            out.append((t0, time.perf_counter(), busy, posts))
    return out


def socket_send_ms(nbytes: int, gap_ms: float, repeats: int = 60) -> tuple[float, float]:
    """(median, 90th percentile) ms of one `sendall` of `nbytes` over a loopback TCP socket
    to a forked reader, each after `gap_ms` of sleep, as a pipeline stage sends once per
    chunk: the kernel's own cost of a transfer on this machine, with no torch and no gloo.
    (Linux and macOS: fork.)"""
    import socket
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    a = socket.create_connection(server.getsockname())
    b, _ = server.accept()
    server.close()
    a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pid = os.fork()
    if pid == 0:  # the reader: drain until the writer closes
        a.close()
        buf = bytearray(1 << 20)
        while b.recv_into(buf):
            pass
        os._exit(0)
    b.close()
    payload, times = bytes(nbytes), []
    for _ in range(repeats):
        time.sleep(gap_ms / 1e3)
        t = time.perf_counter()
        a.sendall(payload)
        times.append(1e3 * (time.perf_counter() - t))
    a.close()
    os.waitpid(pid, 0)
    times.sort()
    return statistics.median(times), times[int(0.9 * len(times))]


def _ping_pong(rank, world, numel, repeats=40):
    """Median one-way seconds of a send + recv of `numel` floats between ranks 0 and 1
    (half a round trip), after 10 untimed round trips."""
    torch.set_num_threads(1)
    t, out = torch.zeros(numel), []
    for i in range(10 + repeats):
        torch.distributed.barrier()
        t0 = time.perf_counter()
        if rank == 0:
            torch.distributed.send(t, 1)
            torch.distributed.recv(t, 1)
        else:
            torch.distributed.recv(t, 0)
            torch.distributed.send(t, 0)
        if i >= 10:
            out.append((time.perf_counter() - t0) / 2)
    return statistics.median(out)


def hand_pipeline(m, args, kind, loss=False, schedule="gpipe",
                  one_group=False) -> tuple[float, float]:
    """(median bubble, median ms of an isend call) of the hand-written pipeline step
    (`_hand_pipeline`, with the bench's loss on the last rank when `loss`) for a timed
    chain, the bubble measured as bigtrain's (span from the first stage's entry to the last
    rank's exit)."""
    chunk_ms = args.long_ms if kind == "long" else args.timed_ms
    how = "sleep" if kind == "sleep" else "spin"
    per_rank = run_ranks(_hand_pipeline, 2, m, args.hidden, args.micro_rows, chunk_ms, how,
                         args.warmup, args.steps, loss, schedule, one_group, timeout=600)
    bubbles = []
    for s in range(args.steps):
        span = max(r[s][1] for r in per_rank) - per_rank[0][s][0]
        bubbles.append(sum(1 - r[s][2] / span for r in per_rank) / 2)
    posts = [t for r in per_rank for step in r for t in step[3]]
    return statistics.median(bubbles), 1e3 * statistics.median(posts)


def one_way_seconds(numel: int) -> float:
    """Median one-way seconds of `numel` floats between two gloo ranks (`_ping_pong`)."""
    return run_ranks(_ping_pong, 2, numel, timeout=600)[0]
