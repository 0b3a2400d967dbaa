import subprocess
import sys

import pytest

from bigtrain.cli.main import main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert "bigtrain 0.1.0" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "train" in capsys.readouterr().out


def test_summary_of_a_function(tmp_path, capsys):
    f = tmp_path / "models.py"
    f.write_text("from bigtrain.layers import Dense, Input\n"
                 "from bigtrain.models import Model\n"
                 "def build():\n"
                 "    i = Input(shape=(1000,))\n"
                 "    return Model(i, Dense(10, activation='softmax')(Dense(512, activation='relu')(i)))\n")
    assert main(["summary", f"{f}:build"]) == 0
    assert "Total params: 517,642" in capsys.readouterr().out


def test_summary_bad_target_says_what_to_pass():
    with pytest.raises(SystemExit, match="MODULE:FUNCTION"):
        main(["summary", "nothing_here"])


def test_train_runs_a_script(tmp_path):
    f = tmp_path / "s.py"
    f.write_text("import sys\nprint('ran', __name__, sys.argv[1:])\n")
    out = subprocess.run([sys.executable, "-m", "bigtrain.cli.main", "train", str(f), "--x", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ran __main__ ['--x', '1']" in out.stdout


@pytest.mark.parametrize("argv, warns", [
    (["--nnodes", "2", "--max-restarts", "2"], True),                  # static by default
    (["--nnodes=1:2", "--max_restarts=1", "--rdzv-backend", "static"], True),
    (["--nnodes", "2", "--max-restarts", "2", "--rdzv-backend", "c10d"], False),
    (["--nnodes", "2"], False),                                          # no restarts
    (["--nproc-per-node", "2", "--max-restarts", "2"], False),           # one host
])
def test_run_warns_when_a_lost_node_could_not_rejoin(argv, warns):
    from bigtrain.cli.main import _restarts_across_hosts_warning
    warning = _restarts_across_hosts_warning([*argv, "train.py"])
    assert (warning is not None) == warns
    if warns:
        assert "--rdzv-backend c10d" in warning


@pytest.mark.parametrize("backend, holder, refused", [
    ("static", "store", True),   # node 0 of a static rendezvous must own the port
    ("c10d", "store", False),    # a second c10d agent joins the store another agent hosts
    ("c10d", "silent", True),    # a program that is no store: refused, not a silent wait
])
def test_run_port_check_lets_a_second_c10d_agent_join_the_store(backend, holder, refused):
    """Two c10d agents on the endpoint's host: the second finds the store's port taken and
    joins it as a client (torch's fallback); a port some other program holds is refused."""
    import socket
    from datetime import timedelta

    from torch.distributed import TCPStore

    from bigtrain.cli.main import _check_rendezvous_port
    with socket.socket() as silent:
        if holder == "store":
            store = TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=10))
            port = store.port
        else:
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            port = silent.getsockname()[1]
        argv = ["--nnodes", "2", "--rdzv-backend", backend, "--rdzv-endpoint",
                f"127.0.0.1:{port}", "train.py"]
        if refused:
            with pytest.raises(SystemExit, match="is in use by another process"):
                _check_rendezvous_port(argv)
        else:
            _check_rendezvous_port(argv)
