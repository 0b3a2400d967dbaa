"""Keep single-host jobs off the network: stores that listen on 127.0.0.1 only.

torch's TCPStore server listens on every interface whatever host it is given. On one host
nothing needs that, so bigtrain binds the listening socket itself (to the loopback address)
and hands it to the TCPStore (`master_listen_fd`):

- `loopback_store(host, port, ...)`: the job's store on rank 0 (see `distributed.py`);
- the rendezvous backend "bigtrain-loopback": torch's c10d rendezvous (elastic agent) on
  such a store, used by `fit(devices=N)` and by `bigtrain run` on one host.
"""
from __future__ import annotations

import contextlib
import ipaddress
import socket
from datetime import timedelta

import torch.distributed as dist

BACKEND = "bigtrain-loopback"
_SOCKETS: list[socket.socket] = []  # the stores' listening sockets live as long as the process


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_store(host: str, port: int, world_size: int | None, timeout: timedelta,
                   **kwargs) -> dist.TCPStore:
    """A master TCPStore whose server socket is bound to loopback `host`:`port`
    (port 0 picks a free one: read it from `store.port`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1" if host == "localhost" else host, port))
    sock.listen(4096)
    _SOCKETS.append(sock)
    return dist.TCPStore(host, sock.getsockname()[1], world_size, is_master=True, timeout=timeout,
                         master_listen_fd=sock.fileno(), **kwargs)


def _create_handler(params):
    from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import create_handler
    from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint
    host, port = parse_rendezvous_endpoint(params.endpoint, default_port=29400)
    if not is_loopback(host):
        raise ValueError(f"rendezvous backend {BACKEND!r} serves one host only; got endpoint "
                         f"{params.endpoint!r}. Across hosts use --rdzv-backend c10d.")
    timeout = timedelta(seconds=params.get_as_int("read_timeout", 60))
    store = loopback_store(host, port, None, timeout, multi_tenant=True, wait_for_workers=False)
    class LoopbackBackend(C10dRendezvousBackend):
        @property
        def name(self) -> str:
            return BACKEND

    handler = create_handler(store, LoopbackBackend(store, params.run_id), params)
    if params.max_nodes == 1:  # one agent: nobody to skew its first join against
        join = handler.next_rendezvous

        def next_rendezvous():
            with _no_start_skew():
                return join()
        handler.next_rendezvous = next_rendezvous
    return handler


@contextlib.contextmanager
def _no_start_skew():
    """Skip the random 0-0.3 s sleep torch's dynamic rendezvous takes before a node's first
    join (it spreads many nodes' first calls on the store). One agent on one host has nobody
    to spread against, and every `fit(devices=N)` paid 0.15 s of it on average, a quarter of
    a later call's start-up. The sleep is the one call of `_delay` with a (low, high) range;
    fixed delays (a poll's 1 s wait) still run. Where torch has no `_delay`, nothing changes.
    """
    from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dyn
    delay = getattr(dyn, "_delay", None)
    if delay is None:
        yield
        return

    def fixed_delays_only(seconds):
        if not isinstance(seconds, tuple):
            delay(seconds)
    dyn._delay = fixed_delays_only
    try:
        yield
    finally:
        dyn._delay = delay


def register_rendezvous() -> str:
    """Make `rdzv_backend="bigtrain-loopback"` available in this process; returns its name."""
    from torch.distributed.elastic.rendezvous import rendezvous_handler_registry as registry
    try:
        registry.register(BACKEND, _create_handler)
    except ValueError:
        pass  # already registered in this process
    return BACKEND
