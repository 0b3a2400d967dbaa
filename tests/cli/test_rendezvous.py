"""`bigtrain run`'s multi-host options and messages, without processes."""
import pytest

from bigtrain.cli import rendezvous
from bigtrain.cli.main import RUN_HELP, _gathering


def test_join_timeout_is_taken_out_of_torchruns_flags():
    assert rendezvous.pop_join_timeout(["--nnodes", "2", "--join-timeout", "15", "t.py"]) == \
        (15.0, ["--nnodes", "2", "t.py"])
    assert rendezvous.pop_join_timeout(["--join_timeout=7.5", "t.py"]) == (7.5, ["t.py"])
    assert rendezvous.pop_join_timeout(["t.py"]) == (rendezvous.JOIN_TIMEOUT_S, ["t.py"])
    assert rendezvous.pop_join_timeout(["--join-timeout", "9", "t.py", "--join-timeout", "3"]) \
        == (9.0, ["t.py", "--join-timeout", "3"])  # the script's own argument stays
    assert rendezvous.JOIN_TIMEOUT_S < 600  # shorter than torch's default
    with pytest.raises(SystemExit, match="--join-timeout takes seconds"):
        rendezvous.pop_join_timeout(["--join-timeout", "soon", "t.py"])


@pytest.mark.parametrize("argv, backend, expected", [
    (["t.py"], "static", ["--rdzv-conf", "timeout=20", "t.py"]),
    (["t.py"], "c10d", ["--rdzv-conf", "join_timeout=20", "t.py"]),
    (["--rdzv-conf", "keep_alive_interval=1", "t.py"], "c10d",
     ["--rdzv-conf", "keep_alive_interval=1,join_timeout=20", "t.py"]),
    (["--rdzv_conf=join_timeout=5", "t.py"], "c10d", ["--rdzv_conf=join_timeout=5", "t.py"]),
])
def test_the_deadline_goes_to_torchs_rendezvous_options(argv, backend, expected):
    assert rendezvous.with_join_timeout(argv, backend, 20) == expected


def test_a_gathering_is_read_from_the_flags():
    g = _gathering(["--nnodes", "1:3", "--node-rank", "2", "--rdzv-endpoint", "h0:2940", "t"],
                   30)
    assert (g.host, g.port, g.nnodes, g.min_nodes, g.node_rank, g.backend) == \
        ("h0", 2940, 3, 1, 2, "static")
    assert not g.hosts_store()  # static: node 0 hosts the store
    assert _gathering(["--nproc-per-node", "2", "t.py"], 30) is None  # one host
    with pytest.raises(SystemExit, match="--join-timeout must be a positive"):
        _gathering(["--nnodes", "2", "--rdzv-endpoint", "h0:1", "t.py"], 0)


def test_progress_and_give_up_lines_name_who_is_missing():
    g = rendezvous.Gathering("host0", 2940, 3, 0, "static", 60)
    joined = rendezvous.parse_joined(b"0@host0;2@host2;")
    assert rendezvous.describe(g, joined, 41.6) == (
        "bigtrain run: waiting for hosts: 2 of 3 joined (node 0 on host0, node 2 on host2); "
        "missing node 1; giving up in 42 s (--join-timeout)")
    line = rendezvous.gave_up(g, joined)
    assert line.startswith("bigtrain run: node rank 1 never joined within 60 s")
    assert "--rdzv-endpoint host0:2940" in line and "raise --join-timeout" in line
    c10d = rendezvous.Gathering("host0", 2940, 2, None, "c10d", 60)  # ranks not given
    line = rendezvous.gave_up(c10d, rendezvous.parse_joined(b"?@host0;"))
    assert "1 of 2 nodes never joined" in line and "--rdzv-backend c10d" in line


def test_help_documents_the_join_timeout():
    assert "--join-timeout S" in RUN_HELP
    assert str(rendezvous.JOIN_TIMEOUT_S) in RUN_HELP


def test_the_watch_reads_who_joined_from_the_store():
    import io
    import socket
    import time
    from datetime import timedelta

    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=10))  # node 0's rendezvous store
    g = rendezvous.Gathering("127.0.0.1", store.port, 2, 0, "static", 30)
    out = io.StringIO()
    watch = rendezvous.JoinWatch(g, 30, out=out)
    watch.start()
    deadline = time.monotonic() + 20
    while "waiting for hosts" not in out.getvalue():
        assert time.monotonic() < deadline and watch.is_alive(), out.getvalue()
        time.sleep(0.1)
    assert f"1 of 2 joined (node 0 on {socket.gethostname()}); missing node 1" in out.getvalue()
    store.append(rendezvous.JOINED_KEY, "1@host1;")  # node 1's watch arrives
    watch.join(timeout=10)
    assert watch.complete.is_set() and not watch.is_alive()
    names = ", ".join(sorted(["host1", socket.gethostname()]))
    assert out.getvalue().splitlines()[-1] == f"bigtrain run: 2 nodes joined ({names})"
