"""Simulated hosts for multi-host tests: Linux network namespaces joined by veth links.

`simulated_hosts(n)` creates `n` network namespaces, each with its own loopback, an `eth0`
(one end of a veth pair) and an address on a private /24 that exists only inside these
namespaces, plus an `/etc/hosts` naming every host (`ip netns exec` bind-mounts
`/etc/netns/<ns>/hosts` over `/etc/hosts` in a private mount namespace, so nothing outside
changes). Commands run in a host through `Host.popen`/`Host.run`, which also give the process
its own hostname (`unshare --uts`). Everything is torn down on exit, also after a failure:
processes killed, namespaces deleted (their veth ends go with them), hosts files removed.
Names carry a per-run token, so runs never collide and no leftovers are mistaken for ours.

    with simulated_hosts(2) as (h0, h1):
        server = h0.popen(["python", "-m", "http.server", "8000", "--bind", h0.addr])
        h1.run(["python", "-c", f"import urllib.request as u; u.urlopen('http://{h0.hostname}:8000')"])

Topology: two hosts share one veth pair; three or more hosts hang off a bridge namespace.
Needs root and iproute2 (`ip`); `unavailable()` says why they cannot be used.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

ETC_NETNS = "/etc/netns"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {out.stderr.strip()}")
    return out


def unavailable() -> str | None:
    """Why namespaces cannot be used here (None when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install -y iproute2 util-linux)"
    probe = f"btprobe{secrets.token_hex(3)}"
    out = _ip("netns", "add", probe, check=False)
    if out.returncode != 0:
        return f"`ip netns add` does not work here: {out.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class Host:
    """One simulated host.

    Attributes:
        netns: the network namespace's name.
        hostname: its hostname (resolvable on every simulated host).
        addr: its IPv4 address on `ifname`.
        ifname: its network interface (`eth0` on every host).
    """
    netns: str
    hostname: str
    addr: str
    ifname: str = "eth0"

    def command(self, argv: list[str]) -> list[str]:
        """`argv` as run on this host (its namespace, hosts file and hostname)."""
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', self.hostname, *argv]

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start `argv` on this host in its own process group (stdout/stderr as given)."""
        return subprocess.Popen(self.command(argv), start_new_session=True, **kwargs)

    def run(self, argv: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(argv), capture_output=True, text=True,
                              timeout=timeout, **kwargs)

    def pids(self) -> list[int]:
        out = _ip("netns", "pids", self.netns, check=False).stdout.split()
        return [int(p) for p in out if p.isdigit()]

    def kill_all(self, sig: int = signal.SIGKILL) -> list[int]:
        """Send `sig` to every process on this host (a machine losing power); their pids."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return pids

    def set_link(self, up: bool) -> None:
        """Plug (`up`) or unplug this host's network cable."""
        _ip("-n", self.netns, "link", "set", self.ifname, "up" if up else "down")


def _add_host(netns: str, subnet: str, index: int, names: list[str]) -> Host:
    _ip("netns", "add", netns)
    _ip("-n", netns, "link", "set", "lo", "up")
    return Host(netns=netns, hostname=names[index], addr=f"{subnet}.{index + 1}")


def _plug(host: Host, link_end: str) -> None:
    """Move one veth end into `host`, call it eth0, give it the host's address, bring it up."""
    _ip("link", "set", link_end, "netns", host.netns)
    _ip("-n", host.netns, "link", "set", link_end, "name", host.ifname)
    _ip("-n", host.netns, "addr", "add", f"{host.addr}/24", "dev", host.ifname)
    _ip("-n", host.netns, "link", "set", host.ifname, "up")


def _wire(token: str, hosts: list[Host], bridge_ns: str | None) -> None:
    if bridge_ns is None:  # two hosts: one cable
        _ip("link", "add", f"bt{token}a", "type", "veth", "peer", "name", f"bt{token}b")
        _plug(hosts[0], f"bt{token}a")
        _plug(hosts[1], f"bt{token}b")
        return
    _ip("-n", bridge_ns, "link", "add", "br0", "type", "bridge")
    _ip("-n", bridge_ns, "link", "set", "br0", "up")
    for i, host in enumerate(hosts):
        end, port = f"bt{token}h{i}", f"bt{token}p{i}"
        _ip("link", "add", end, "type", "veth", "peer", "name", port)
        _ip("link", "set", port, "netns", bridge_ns)
        _ip("-n", bridge_ns, "link", "set", port, "master", "br0")
        _ip("-n", bridge_ns, "link", "set", port, "up")
        _plug(host, end)


def _write_hosts_files(hosts: list[Host]) -> None:
    table = "127.0.0.1 localhost\n" + "".join(f"{h.addr} {h.hostname}\n" for h in hosts)
    for host in hosts:
        folder = os.path.join(ETC_NETNS, host.netns)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "hosts"), "w", encoding="utf-8") as f:
            f.write(table)


def _teardown(token: str, namespaces: list[str], etc_netns_was_there: bool) -> list[str]:
    """Kill, delete, remove; returns what could not be cleaned (empty when all went)."""
    left = []
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if line.count(":") > 1 else ""
        if name.startswith(f"bt{token}"):  # a veth end that never reached its namespace
            _ip("link", "del", name, check=False)
    for ns in namespaces:
        for pid in _ip("netns", "pids", ns, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 10
    for ns in namespaces:
        while _ip("netns", "pids", ns, check=False).stdout.split() and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        if _ip("netns", "del", ns, check=False).returncode != 0 and \
                ns in _ip("netns", "list", check=False).stdout:
            left.append(f"netns {ns}")
        shutil.rmtree(os.path.join(ETC_NETNS, ns), ignore_errors=True)
    if not etc_netns_was_there:
        with contextlib.suppress(OSError):
            os.rmdir(ETC_NETNS)  # only if empty: another run may be using it
    return left


@contextlib.contextmanager
def simulated_hosts(n: int = 2, prefix: str = "host"):
    """Create `n` simulated hosts named `{prefix}0..{prefix}{n-1}`; yields their Hosts.

    Args:
        n: number of hosts (>= 1).
        prefix: hostname prefix.

    Example:
        >>> with simulated_hosts(2) as (h0, h1):  # doctest: +SKIP
        ...     print(h1.run(["hostname"], timeout=10).stdout)
        host1
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    token = secrets.token_hex(3)  # 6 hex digits: interface names stay under 15 characters
    rng = secrets.SystemRandom()
    subnet = f"10.{rng.randint(1, 254)}.{rng.randint(0, 254)}"  # exists only in these namespaces
    names = [f"{prefix}{i}" for i in range(n)]
    namespaces = [f"bt-{token}-{name}" for name in names]
    bridge_ns = f"bt-{token}-switch" if n > 2 else None
    etc_netns_was_there = os.path.isdir(ETC_NETNS)
    created: list[str] = []
    try:
        hosts = []
        for i, ns in enumerate(namespaces):
            created.append(ns)
            hosts.append(_add_host(ns, subnet, i, names))
        if bridge_ns:
            created.append(bridge_ns)
            _ip("netns", "add", bridge_ns)
        if n > 1:
            _wire(token, hosts, bridge_ns)
        _write_hosts_files(hosts)
        yield hosts
    finally:
        left = _teardown(token, created, etc_netns_was_there)
        if left:
            raise RuntimeError(f"could not remove {', '.join(left)}")


def leftovers(token_prefix: str = "bt-") -> list[str]:
    """Namespaces that look like ours and still exist (for tests of the teardown)."""
    return [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines()
            if line.startswith(token_prefix)]
