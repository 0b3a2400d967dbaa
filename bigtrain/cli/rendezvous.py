"""What `bigtrain run` says while its hosts gather (torch's rendezvous), and when they do not.

torchrun waits silently for every node (up to 600 s by default) and then fails with a long
traceback. bigtrain run instead:

- gives torch a shorter deadline, `--join-timeout` (JOIN_TIMEOUT_S by default), through the
  rendezvous' own options: `timeout` for the static rendezvous (node 0's TCPStore waits that
  long for the others), `join_timeout` for c10d;
- on a node that does not host the rendezvous store, waits for the store to listen before
  handing off, so a wrong `--rdzv-endpoint` ends in "nothing listens at HOST:PORT" (torch's
  client would retry silently, then raise);
- while the nodes gather, prints a line every INTERVAL_S seconds naming who joined, who is
  missing and when it gives up (`JoinWatch`, a thread reading the rendezvous store);
- when torch gives up, replaces its traceback with one line naming the node ranks that
  never joined and how to fix it.

Who joined: each node's watch appends `RANK@HOSTNAME;` to the store key JOINED_KEY once it
reaches the store (RANK is `--node-rank`, or `?` where the rendezvous assigns ranks itself).
"""
from __future__ import annotations

import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

JOIN_TIMEOUT_S = 120     # default --join-timeout (torch's own default is 600 s)
INTERVAL_S = 5.0         # seconds between two progress lines
JOINED_KEY = "bigtrain/joined"


@dataclass(frozen=True)
class Gathering:
    """The rendezvous a `bigtrain run` takes part in, read from its torchrun flags.

    Attributes:
        host: the `--rdzv-endpoint` host (where the rendezvous store listens).
        port: its port.
        nnodes: the number of nodes expected (the maximum of `--nnodes MIN:MAX`).
        node_rank: this node's `--node-rank`, or None when not given.
        backend: the rendezvous backend (`static` unless `--rdzv-backend` says otherwise).
        join_timeout: seconds the nodes have to gather (`--join-timeout`).
        min_nodes: the minimum of `--nnodes MIN:MAX` (the job starts with that many).
    """
    host: str
    port: int
    nnodes: int
    node_rank: int | None
    backend: str
    join_timeout: float
    min_nodes: int | None = None

    def __post_init__(self):
        if self.join_timeout <= 0:
            raise SystemExit(f"bigtrain run: --join-timeout must be a positive number of "
                             f"seconds, got {self.join_timeout:g}")

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def hosts_store(self) -> bool:
        """Whether this node starts the store (torch's rule for the backend)."""
        if self.backend == "static":
            return not self.node_rank
        from torch.distributed.elastic.rendezvous.utils import _matches_machine_hostname
        return _matches_machine_hostname(self.host)


def script_index(argv: list[str]) -> int:
    """Where the training script (`*.py`) starts in `bigtrain run`'s arguments; what follows
    is the script's own (len(argv) when there is none)."""
    return next((i for i, a in enumerate(argv) if a.endswith(".py")), len(argv))


def pop_flag(argv: list[str], *names: str) -> tuple[str | None, list[str]]:
    """Flag `NAME VALUE` or `NAME=VALUE` (any of `names`) taken out of `bigtrain run`'s own
    flags: (its value or None, the other arguments); the script's arguments are left alone."""
    out, value, i, end = [], None, 0, script_index(argv)
    while i < end:
        a = argv[i]
        if a in names and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
            continue
        if a.startswith(tuple(f"{n}=" for n in names)):
            value = a.split("=", 1)[1]
        else:
            out.append(a)
        i += 1
    return value, out + argv[end:]


def pop_join_timeout(argv: list[str]) -> tuple[float, list[str]]:
    """`--join-timeout S` taken out of torchrun's flags: (seconds, the other arguments);
    the script's own arguments are left alone."""
    value, out = pop_flag(argv, "--join-timeout", "--join_timeout")
    try:
        return (JOIN_TIMEOUT_S if value is None else float(value)), out
    except ValueError:
        raise SystemExit(f"bigtrain run: --join-timeout takes seconds (e.g. 120), "
                         f"got {value!r}") from None


def with_join_timeout(argv: list[str], backend: str, seconds: float) -> list[str]:
    """torchrun flags with the rendezvous deadline added to `--rdzv-conf` (a value the user
    gave there wins)."""
    key = "timeout" if backend == "static" else "join_timeout"
    for i, a in enumerate(argv):
        conf = None
        if a in ("--rdzv-conf", "--rdzv_conf") and i + 1 < len(argv):
            conf, at = argv[i + 1], i + 1
        elif a.startswith(("--rdzv-conf=", "--rdzv_conf=")):
            conf, at = a.split("=", 1)[1], i
        if conf is None:
            continue
        if any(kv.split("=", 1)[0].strip() == key for kv in conf.split(",")):
            return argv
        merged = f"{conf},{key}={int(seconds)}" if conf else f"{key}={int(seconds)}"
        return [*argv[:at], merged if at == i + 1 else f"{a.split('=', 1)[0]}={merged}",
                *argv[at + 1:]]
    return ["--rdzv-conf", f"{key}={int(seconds)}", *argv]


def probe(host: str, port: int, timeout: float = 2.0) -> str | None:
    """None when something accepts TCP connections at host:port, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return "nothing listens"
    except socket.timeout:
        return "no answer (a firewall, or the host is down?)"
    except OSError as e:
        return e.strerror or str(e)


def wait_for_store(g: Gathering, out=sys.stderr) -> float:
    """On a node that does not host the store: wait until it listens, with a progress line
    every INTERVAL_S; seconds left of the join timeout. Exits with one line when it never
    listens."""
    start, printed = time.monotonic(), -INTERVAL_S
    while True:
        why = probe(g.host, g.port)
        waited = time.monotonic() - start
        if why is None:
            return g.join_timeout - waited
        if waited >= g.join_timeout:
            raise SystemExit(
                f"bigtrain run: {why} at {g.endpoint} (waited {g.join_timeout:g} s, "
                "--join-timeout): start node 0 (the host in --rdzv-endpoint) with the same "
                "--rdzv-endpoint, or correct the host and port given here")
        if waited - printed >= INTERVAL_S:
            printed = waited
            print(f"bigtrain run: waiting for the rendezvous at {g.endpoint} ({why} there "
                  f"yet); giving up in {g.join_timeout - waited:.0f} s (--join-timeout)",
                  file=out, flush=True)
        time.sleep(min(0.5, max(0.0, g.join_timeout - waited)))


def parse_joined(raw: bytes) -> dict[str, str]:
    """JOINED_KEY's value -> {node label: hostname} (labels: node ranks, or hostnames)."""
    joined = {}
    for item in raw.decode().split(";"):
        if "@" in item:
            rank, hostname = item.split("@", 1)
            joined[rank if rank != "?" else hostname] = hostname
    return joined


def describe(g: Gathering, joined: dict[str, str], left_s: float) -> str:
    """One progress line: who joined, who is missing, when it gives up."""
    names = ", ".join(f"node {k} on {v}" if k != v else v for k, v in sorted(joined.items()))
    missing = missing_ranks(g, joined)
    miss = (f"missing node {', '.join(missing)}" if missing
            else f"missing {max(0, g.nnodes - len(joined))}")
    return (f"bigtrain run: waiting for hosts: {len(joined)} of {g.nnodes} joined ({names}); "
            f"{miss}; giving up in {max(0.0, left_s):.0f} s (--join-timeout)")


def missing_ranks(g: Gathering, joined: dict[str, str]) -> list[str]:
    """Node ranks not joined, when every node gave --node-rank (else [])."""
    if not all(k.isdigit() for k in joined):
        return []
    return [str(r) for r in range(g.nnodes) if str(r) not in joined]


def gave_up(g: Gathering, joined: dict[str, str]) -> str:
    """The one line printed instead of torch's traceback when the nodes did not gather."""
    missing = missing_ranks(g, joined)
    who = (f"node rank {', '.join(missing)} never joined" if missing else
           f"{max(0, g.nnodes - len(joined))} of {g.nnodes} nodes never joined")
    seen = ", ".join(sorted(joined.values())) or "none"
    flags = (f"--nnodes {g.nnodes}, its own --node-rank and --rdzv-endpoint {g.endpoint}"
             if g.backend == "static" else
             f"--nnodes {g.nnodes} --rdzv-backend c10d --rdzv-endpoint {g.endpoint}")
    return (f"bigtrain run: {who} within {g.join_timeout:g} s (--join-timeout; joined: "
            f"{seen}). Start `bigtrain run` on the missing host with {flags}; check that it "
            f"reaches {g.endpoint} (firewall, GLOO_SOCKET_IFNAME), or raise --join-timeout.")


class JoinWatch(threading.Thread):
    """Reports the gathering every INTERVAL_S until all nodes joined or time ran out.

    Args:
        g: the gathering.
        seconds_left: of the join timeout, from now.
        out: where the lines go (stderr).
    """

    def __init__(self, g: Gathering, seconds_left: float, out=sys.stderr):
        super().__init__(daemon=True, name="bigtrain-join-watch")
        self.g, self.out = g, out
        self.deadline = time.monotonic() + seconds_left
        self.joined: dict[str, str] = {}
        self.complete = threading.Event()
        self._halt = threading.Event()
        self._store = None

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        next_line, printed = time.monotonic() + 1.0, False  # torch's store starts meanwhile
        while not self._halt.is_set() and time.monotonic() < self.deadline:
            try:
                self._poll()
            except Exception:  # noqa: BLE001 - a progress report must never break the job
                pass
            if len(self.joined) >= (self.g.min_nodes or self.g.nnodes):
                self.complete.set()
                if printed:
                    print(f"bigtrain run: {len(self.joined)} nodes joined "
                          f"({', '.join(sorted(self.joined.values()))})", file=self.out,
                          flush=True)
                return
            if time.monotonic() >= next_line:
                print(describe(self.g, self.joined, self.deadline - time.monotonic()),
                      file=self.out, flush=True)
                next_line, printed = time.monotonic() + INTERVAL_S, True
            self._halt.wait(0.5)

    def _poll(self) -> None:
        import torch.distributed as dist
        if self._store is None:
            if probe(self.g.host, self.g.port) is not None:
                return
            self._store = dist.TCPStore(self.g.host, self.g.port, is_master=False,
                                        wait_for_workers=False, timeout=timedelta(seconds=10))
            rank = "?" if self.g.node_rank is None else str(self.g.node_rank)
            self._store.append(JOINED_KEY, f"{rank}@{socket.gethostname()};")
        self.joined = parse_joined(self._store.get(JOINED_KEY))
