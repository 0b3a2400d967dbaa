"""`bigtrain run` inside a job that a cluster started, and `bigtrain slurm`.

    srun bigtrain run train.py                  # SLURM: every task is one rank
    mpirun -np 8 bigtrain run train.py          # Open MPI / MPICH
    bigtrain run train.py                       # a Kubernetes pod (RANK, WORLD_SIZE, MASTER_*)
    bigtrain run --print-env                    # what bigtrain understood, then exit
    bigtrain run --ray ADDRESS --workers 4 train.py   # fit's ranks as Ray Train workers
    bigtrain slurm train.py --nodes 2 --gpus-per-node 8 --time 02:00:00 [--submit]

Without torchrun's launch flags (--nproc-per-node, --nnodes, --rdzv-*, ...), `bigtrain run`
looks for a launcher's variables (bigtrain.launch.environments). Found, this process is one
rank: it joins the job's process group (within --join-timeout) and runs the script, whose
`fit` uses that group. Not found, `bigtrain run` hands off to torchrun as before.
"""
from __future__ import annotations

import argparse
import os
import sys

from bigtrain.cli.rendezvous import pop_flag, script_index

# torchrun flags that mean "torchrun starts the ranks": the cluster's variables then stay unused
_LAUNCH_FLAGS = ("--nproc-per-node", "--nproc_per_node", "--nnodes", "--node-rank",
                 "--node_rank", "--rdzv", "--standalone", "--master-addr", "--master_addr",
                 "--master-port", "--master_port")
PRINT_ENV = "--print-env"


def run_on_ray(argv: list[str], run_script) -> int | None:
    """`bigtrain run --ray ADDRESS [--workers N] SCRIPT ARGS`: run the script here, its `fit`
    sending the ranks to the Ray cluster at ADDRESS as Ray Train workers (fit's cluster="ray";
    N workers where the script's fit names no devices). None when --ray is not given."""
    address, rest = pop_flag(argv, "--ray")
    workers, rest = pop_flag(rest, "--workers")
    end = script_index(rest)
    flags = rest[:end]
    if address is None:
        if "--ray" in flags or workers is not None:
            raise SystemExit("bigtrain run: --ray needs the Ray cluster's address: "
                             "`bigtrain run --ray ADDRESS [--workers N] SCRIPT` (ADDRESS as "
                             "`ray start --head` prints it, e.g. 10.0.0.1:6379, or 'auto')")
        return None
    if workers is not None and (not workers.isdigit() or int(workers) < 1):
        raise SystemExit(f"bigtrain run: --workers must be a positive number of Ray Train "
                         f"workers, got {workers!r}")
    if flags:
        raise SystemExit(f"bigtrain run: {' '.join(flags)}: torchrun's flags do nothing with "
                         "--ray (Ray starts the ranks); run `bigtrain run --ray ADDRESS "
                         "[--workers N] SCRIPT [ARGS]`")
    if end == len(rest):
        raise SystemExit("bigtrain run: no training script (SCRIPT.py) given")
    from bigtrain.launch.ray import CLUSTER_ENV, WORKERS_ENV, import_ray
    try:
        import_ray()
    except ImportError as e:
        raise SystemExit(f"bigtrain run --ray: {e}") from None
    os.environ["RAY_ADDRESS"], os.environ[CLUSTER_ENV] = address, "ray"
    if workers is not None:
        os.environ[WORKERS_ENV] = workers
    return run_script(rest[end], rest[end + 1:])


def run_on_cluster(argv: list[str], join_timeout: float, run_script) -> int | None:
    """`bigtrain run ARGV` as one rank of a cluster's job; None when this is not one (hand off
    to torchrun). `run_script(script, args)` runs the script as `bigtrain train` does.

    Exits with one line, no traceback, when the variables are wrong or ranks never came.
    """
    from bigtrain.launch.environments import ClusterEnvError, detect
    end = script_index(argv)
    print_env = PRINT_ENV in argv[:end]
    flags = [a for a in argv[:end] if a != PRINT_ENV]
    torchrun_flags = [a for a in flags if a.startswith(_LAUNCH_FLAGS)]
    if {"-h", "--help"} & set(flags):
        return None  # torchrun's help, with bigtrain's lines first
    try:
        cluster = None if torchrun_flags else detect()
    except ClusterEnvError as e:
        raise SystemExit(f"bigtrain run: {e}") from None
    if print_env:
        print(_understood(cluster, torchrun_flags), flush=True)
        return 0
    if cluster is None:
        return None
    if flags:
        raise SystemExit(f"bigtrain run: {' '.join(flags)}: torchrun's flags do nothing in a "
                         f"{cluster.launcher} job (it starts the ranks itself); run "
                         f"`bigtrain run [--join-timeout S] SCRIPT [ARGS]`")
    if end == len(argv):
        raise SystemExit("bigtrain run: no training script (SCRIPT.py) given")
    from bigtrain.launch.cluster import join_cluster
    try:
        join_cluster(cluster, join_timeout)
    except ClusterEnvError as e:
        raise SystemExit(f"bigtrain run (rank {cluster.rank}): {e}") from None
    return run_script(argv[end], argv[end + 1:])


def _understood(cluster, torchrun_flags: list[str]) -> str:
    if torchrun_flags:
        return (f"bigtrain run: torchrun's flags given ({' '.join(torchrun_flags)}): torchrun "
                "starts the ranks; a cluster launcher's variables, if any, are not used")
    if cluster is None:
        return ("bigtrain run: no cluster launcher found (no SLURM_PROCID/SLURM_NTASKS, "
                "OMPI_COMM_WORLD_*, PMI_RANK/PMI_SIZE, or RANK/WORLD_SIZE/MASTER_ADDR): "
                "`bigtrain run --nproc-per-node N SCRIPT` starts N ranks itself")
    return cluster.describe()


SLURM_HELP = ("write (and with --submit submit) an sbatch script that runs `srun bigtrain run "
              "SCRIPT` on every rank (see `bigtrain slurm --help`)")


def add_slurm_parser(sub) -> None:
    """`bigtrain slurm` in the command list (it parses its own arguments: slurm_main)."""
    sub.add_parser("slurm", add_help=False, help=SLURM_HELP)


def slurm_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bigtrain slurm", description=SLURM_HELP,
                                epilog="The script's own arguments follow `--`: bigtrain slurm "
                                       "train.py --nodes 2 -- --epochs 3")
    p.add_argument("script", help="the training script (.py)")
    p.add_argument("script_args", nargs="*", help="its arguments (after --)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0, help="one rank per GPU (0: CPU)")
    p.add_argument("--tasks-per-node", type=int, default=None,
                   help="ranks per node of a CPU job (default 1)")
    p.add_argument("--cpus-per-task", type=int, default=None)
    p.add_argument("--partition", default=None)
    p.add_argument("--time", default=None, help="wall-clock limit, e.g. 02:00:00")
    p.add_argument("--job-name", default=None)
    p.add_argument("--join-timeout", type=float, default=None,
                   help="seconds the ranks have to gather (bigtrain run's default: 120)")
    p.add_argument("--setup", action="append", default=[],
                   help="a shell line to run before srun (repeatable), e.g. "
                        "'source .venv/bin/activate'")
    p.add_argument("-o", "--out", default=None, help="where to write (default: SCRIPT.sbatch)")
    p.add_argument("--submit", action="store_true", help="run sbatch on the written file")
    return p


def slurm_main(argv: list[str]) -> int:
    """`bigtrain slurm ARGV`: options may follow the script (argparse's intermixed mode)."""
    return run_slurm(slurm_parser().parse_intermixed_args(argv))


def run_slurm(args: argparse.Namespace) -> int:
    from bigtrain.launch.slurm import SbatchJob, submit
    try:
        job = SbatchJob(script=args.script, script_args=tuple(args.script_args),
                        nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                        tasks_per_node=args.tasks_per_node, cpus_per_task=args.cpus_per_task,
                        partition=args.partition, time=args.time, job_name=args.job_name,
                        join_timeout=args.join_timeout, setup=tuple(args.setup))
    except ValueError as e:
        raise SystemExit(f"bigtrain slurm: {e}") from None
    if not os.path.isfile(args.script):
        print(f"bigtrain slurm: note: {args.script} is not here; it must exist where the "
              "job runs", file=sys.stderr)
    out = args.out or os.path.splitext(os.path.basename(args.script))[0] + ".sbatch"
    with open(out, "w", encoding="utf-8") as f:
        f.write(job.render())
    print(f"bigtrain slurm: wrote {out} ({job.world_size} ranks: {job.nodes} node(s) x "
          f"{job.ranks_per_node})", flush=True)
    if args.submit:
        try:
            print(submit(out), flush=True)
        except RuntimeError as e:
            raise SystemExit(f"bigtrain slurm: {e}") from None
    return 0
