"""The `bigtrain` command.

    bigtrain train examples/seed_example.py          # run a training script
    bigtrain run --nproc-per-node 2 train.py         # N ranks via torch.distributed.run
    srun bigtrain run train.py                       # one rank of a SLURM / MPI / k8s job
    bigtrain run --ray HOST:6379 --workers 4 train.py  # ranks as Ray Train workers
    bigtrain slurm train.py --nodes 2 --gpus-per-node 8   # write an sbatch script
    bigtrain summary examples/models.py:build_model  # print a model's summary
    bigtrain plan examples/models.py:build_model --devices 8 --device-memory 80GB
    bigtrain report runs/seed                         # Markdown + PNG plots of a run
    bigtrain doctor runs/seed                         # why is it slow / poor?
    bigtrain verify train.py --strategies ddp,zero3   # parity of strategies vs one process
    bigtrain --version
"""
from __future__ import annotations

import argparse
import os
import runpy
import sys

import bigtrain
from bigtrain.cli import cluster, insight, rendezvous, run_args, verify
from bigtrain.cli.target import load_object
from bigtrain.launch.parent_watch import LAUNCHER_PID_ENV
from bigtrain.parallel.lost_node import quiet_restart_failures

RUN_HELP = f"""\
bigtrain run [--join-timeout S] [torchrun flags] SCRIPT [ARGS]
bigtrain run --ray ADDRESS [--workers N] SCRIPT [ARGS]

Hands off to torch.distributed.run (torchrun). Added by bigtrain:
  --join-timeout S   seconds the nodes of a multi-host job have to gather (default \
{rendezvous.JOIN_TIMEOUT_S};
                     torchrun waits 600). Meanwhile a line every few seconds names who joined
                     and who is missing. Passed to torch's rendezvous (static: --rdzv-conf
                     timeout=S, c10d: join_timeout=S), so with --max-restarts it also bounds
                     how long the survivors wait for a lost node to come back.

Inside a job a cluster started (srun, mpirun, a Kubernetes training operator) and without
torchrun's launch flags, this process is one rank: it reads SLURM_*, OMPI_COMM_WORLD_*,
PMI_* or RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, joins the job, and runs SCRIPT.
  --print-env        show what bigtrain understood of the environment, and exit

With --ray ADDRESS (needs `pip install 'bigtrain[ray]'`), SCRIPT runs in this process and its
fit sends the ranks to the Ray cluster at ADDRESS as Ray Train workers (fit's cluster="ray").
  --workers N        Ray Train workers where the script's fit names no devices=

torchrun's flags follow.
"""


def _train(args) -> int:
    """Run a training script as `python SCRIPT ARGS` would (it is __main__)."""
    if not os.path.isfile(args.script):
        raise SystemExit(f"bigtrain train: no such script: {args.script}")
    argv, path = sys.argv, list(sys.path)
    sys.argv = [args.script, *args.script_args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(args.script)))
    try:
        runpy.run_path(args.script, run_name="__main__")
    finally:  # main() may be called from Python (tests, notebooks): leave it as it was
        sys.argv, sys.path[:] = argv, path
    return 0


def _run_script(script: str, args: list[str]) -> int:
    return _train(argparse.Namespace(script=script, script_args=args))


def _summary(args) -> int:
    from torch import nn

    from bigtrain.models import Model
    obj = load_object(args.target)
    model = obj() if callable(obj) and not isinstance(obj, nn.Module) else obj
    if isinstance(model, nn.Module) and not isinstance(model, Model):
        model = Model(model)
    if not isinstance(model, Model):
        raise SystemExit(f"{args.target} did not give a model (got {type(model).__name__})")
    model.summary()
    return 0


def _run(args, rest: list[str]) -> int:
    """Hand off to torch.distributed.run (torchrun) with bigtrain's safe defaults."""
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")  # restarts deadlock otherwise
    join_timeout, argv = rendezvous.pop_join_timeout(list(rest))
    ran = cluster.run_on_ray(argv, _run_script)  # --ray ADDRESS
    if ran is None:
        ran = cluster.run_on_cluster(argv, join_timeout, _run_script)  # srun / mpirun / k8s
    if ran is not None:
        return ran
    flags = run_args.launcher_flags(argv)  # torchrun's; the rest is the script's own
    if {"-h", "--help"} & set(flags):
        print(RUN_HELP, flush=True)
    else:
        run_args.check_script(argv)
    nproc = _flag(flags, "--nproc-per-node", "--nproc_per_node")
    if nproc is not None and (not nproc.isdigit() or int(nproc) < 1) and nproc not in (
            "auto", "cpu", "gpu"):
        raise SystemExit(f"bigtrain run: --nproc-per-node must be a positive number of processes "
                         f"(or auto), got {nproc!r}")
    if nproc and nproc.isdigit() and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(nproc)))
    if not any(a.startswith("--rdzv") or a.startswith("--rdzv_") for a in flags) and \
            not any(a.startswith("--nnodes") for a in flags):
        # one host: rendezvous on loopback only, on a free port
        from bigtrain.launch.loopback import register_rendezvous
        flags = ["--rdzv-backend", register_rendezvous(), "--rdzv-endpoint", "127.0.0.1:0",
                 "--local-addr", "127.0.0.1", *flags]
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's pairs on loopback too
    gathering = _gathering(flags, join_timeout)
    if gathering is not None:
        flags = rendezvous.with_join_timeout(flags, gathering.backend, join_timeout)
    _check_rendezvous_port(flags)
    warning = _restarts_across_hosts_warning(flags)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    restarts = _flag(flags, "--max-restarts", "--max_restarts") or "0"
    quiet_restart_failures(int(restarts) if restarts.isdigit() else 0)
    argv = flags + argv[len(run_args.launcher_flags(argv)):]
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())  # its ranks die with it (SIGKILL too)
    return _launch(argv, gathering)


def _launch(argv: list[str], gathering: rendezvous.Gathering | None) -> int:
    """torchrun on `argv`; a failed rank or a signal ends in an exit code, not a traceback."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    try:
        if gathering is None:
            run_args.torchrun(argv)
        else:
            _gather_and_run(run_args.torchrun, argv, gathering)
    except (ChildFailedError, SignalException) as e:
        return run_args.exit_code_of(e)
    return 0


def _gather_and_run(torchrun_main, argv: list[str], gathering: rendezvous.Gathering) -> None:
    """torchrun across hosts, reporting the gathering (see bigtrain.cli.rendezvous)."""
    from torch.distributed import DistError
    from torch.distributed.elastic.rendezvous import RendezvousError
    left = gathering.join_timeout
    if not gathering.hosts_store():
        left = rendezvous.wait_for_store(gathering)  # exits when nothing ever listens
    watch = rendezvous.JoinWatch(gathering, left)
    watch.start()
    try:
        torchrun_main(argv)
    except (RendezvousError, DistError):
        if watch.complete.is_set():
            raise  # the nodes had gathered: a later failure, shown as torch reports it
        raise SystemExit(rendezvous.gave_up(gathering, watch.joined)) from None
    finally:
        watch.stop()


def _gathering(argv: list[str], join_timeout: float) -> rendezvous.Gathering | None:
    """The multi-host rendezvous `argv` asks for (None on one host)."""
    endpoint = _flag(argv, "--rdzv-endpoint", "--rdzv_endpoint")
    least, _, nnodes = (_flag(argv, "--nnodes") or "1").rpartition(":")
    backend = _flag(argv, "--rdzv-backend", "--rdzv_backend") or "static"
    rank = _flag(argv, "--node-rank", "--node_rank")
    if not endpoint or not nnodes.isdigit() or int(nnodes) < 2 or \
            backend not in ("static", "c10d"):
        return None
    host, _, port = endpoint.rpartition(":") if ":" in endpoint else (endpoint, "", "29400")
    if not port.isdigit() or int(port) == 0:
        return None
    return rendezvous.Gathering(host=host, port=int(port), nnodes=int(nnodes),
                                node_rank=int(rank) if rank and rank.isdigit() else None,
                                backend=backend, join_timeout=join_timeout,
                                min_nodes=int(least) if least.isdigit() else None)


def _flag(argv: list[str], *names: str) -> str | None:
    for i, a in enumerate(argv):
        for n in names:
            if a == n and i + 1 < len(argv):
                return argv[i + 1]
            if a.startswith(n + "="):
                return a.split("=", 1)[1]
    return None


def _restarts_across_hosts_warning(argv: list[str]) -> str | None:
    """A note when restarts across hosts use the static rendezvous, where a lost node that is
    started again cannot rejoin reliably (None when there is nothing to say).

    Under static rendezvous every attempt's keys live in node 0's store, named by the restart
    count; a node started again counts from 0 while the survivors have moved on, so it meets
    an earlier attempt's keys (dead peers' addresses). The c10d rendezvous forms a new round
    with a fresh store for each attempt and lets the node in.
    """
    restarts = _flag(argv, "--max-restarts", "--max_restarts") or "0"
    nnodes = (_flag(argv, "--nnodes") or "1").split(":")[-1]
    backend = _flag(argv, "--rdzv-backend", "--rdzv_backend") or "static"
    if backend != "static" or not restarts.isdigit() or int(restarts) == 0 or \
            not nnodes.isdigit() or int(nnodes) < 2:
        return None
    return ("bigtrain run: --max-restarts across hosts with the static rendezvous restarts "
            "workers whose node is still up, but a lost node that is started again cannot "
            "rejoin reliably; add --rdzv-backend c10d (and an --rdzv-endpoint on a host "
            "expected to stay up) so that it can.")


def _check_rendezvous_port(argv: list[str]) -> None:
    """The first node hosts the rendezvous store: fail at once, naming the port, when another
    process already holds it (torch would otherwise wait for its read timeout)."""
    import socket

    endpoint = _flag(argv, "--rdzv-endpoint", "--rdzv_endpoint")
    node_rank = _flag(argv, "--node-rank", "--node_rank") or "0"
    if not endpoint or ":" not in endpoint or node_rank != "0":
        return
    # c10d has no node ranks: every agent on the endpoint's host tries to host the store and,
    # finding it taken, joins it as a client (torch's documented fallback)
    c10d = (_flag(argv, "--rdzv-backend", "--rdzv_backend") or "static") == "c10d"
    host, port = endpoint.rsplit(":", 1)
    if not port.isdigit() or int(port) == 0:
        return
    try:
        local = socket.gethostbyname(host) in ("127.0.0.1", socket.gethostbyname(socket.gethostname()))
    except OSError:
        return
    if not local:
        return
    with socket.socket() as s:
        # as torch's TCPStore binds (SO_REUSEADDR): a port held only by connections in
        # TIME_WAIT after a previous job is free for it, a listening socket is not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((socket.gethostbyname(host), int(port)))
        except OSError as e:
            if c10d and _answers_as_store(host, int(port)):
                return  # another agent of this job hosts the store: torch joins it
            raise SystemExit(f"bigtrain run: rendezvous endpoint {endpoint} is in use by another "
                             f"process ({e.strerror}); choose another port in --rdzv-endpoint "
                             "(or port 0 on one host for a free one)") from None


def _answers_as_store(host: str, port: int, timeout_s: float = 10.0) -> bool:
    """Whether a torch.distributed store answers at host:port within `timeout_s` (a c10d
    rendezvous another agent hosts), rather than some other program holding the port.

    The store client runs in a child process: against a listener that never answers it
    waits past its own timeout, and only a process can be stopped from outside."""
    import subprocess
    code = ("import sys, datetime, torch.distributed as d; d.TCPStore(sys.argv[1], "
            "int(sys.argv[2]), is_master=False, timeout=datetime.timedelta(seconds=5))")
    try:
        done = subprocess.run([sys.executable, "-c", code, host, str(port)],
                              capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bigtrain", description="Keras-simple training that scales "
                                "from one CPU to many machines.")
    p.add_argument("--version", action="version", version=f"bigtrain {bigtrain.__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="run a training script (as python SCRIPT would)")
    t.add_argument("script")
    t.add_argument("script_args", nargs=argparse.REMAINDER)
    s = sub.add_parser("summary", help="print the summary of MODULE:FUNCTION's model")
    s.add_argument("target", help="file.py:function or package.module:function")
    insight.add_parsers(sub)
    verify.add_parser(sub)
    cluster.add_slurm_parser(sub)
    sub.add_parser("run", add_help=False,
                   help="launch N ranks of a script (torchrun flags: --nproc-per-node, --nnodes, "
                        "--node-rank, --rdzv-endpoint, --max-restarts; see `bigtrain run --help`)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "run":
        return _run(None, argv[1:])
    if argv and argv[0] == "slurm":  # its options may follow the script
        return cluster.slurm_main(argv[1:])
    args = build_parser().parse_args(argv)
    commands = {"train": _train, "summary": _summary, "plan": insight.run_plan,
                "report": insight.run_report, "doctor": insight.run_doctor,
                "verify": verify.run_verify, "export": insight.run_export,
                "inventory": insight.run_inventory}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
