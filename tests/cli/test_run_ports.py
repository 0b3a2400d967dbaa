"""`bigtrain run`'s rendezvous port check binds as torch's TCPStore does (SO_REUSEADDR): a port
that a previous job left in TIME_WAIT is free, one that a process listens on is not."""
import errno
import socket

import pytest

from bigtrain.cli.main import _check_rendezvous_port


def _port_in_time_wait() -> int:
    """A loopback port held only by a connection in TIME_WAIT (the side that closes first
    keeps it, here the server's accepted socket), as after a finished job's store. Like
    torch's store the listener sets SO_REUSEADDR (Linux reuses a TIME_WAIT port only when
    both the old and the new socket set it)."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        conn, _ = listener.accept()
        conn.close()    # the server side closes first: it enters TIME_WAIT
        client.recv(1)  # the FIN has arrived (b"")
        client.close()
    return port


def test_a_port_left_in_time_wait_is_accepted():
    port = _port_in_time_wait()
    with socket.socket() as plain, pytest.raises(OSError) as e:  # the state the check must pass
        plain.bind(("127.0.0.1", port))
    assert e.value.errno == errno.EADDRINUSE
    _check_rendezvous_port(["--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{port}", "t.py"])


def test_a_port_with_a_listener_is_refused():
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with pytest.raises(SystemExit, match=f"127.0.0.1:{port} is in use by another process"):
            _check_rendezvous_port(["--rdzv-endpoint", f"127.0.0.1:{port}", "t.py"])
