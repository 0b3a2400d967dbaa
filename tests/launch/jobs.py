"""Ranks of a simulated cluster job: `bigtrain run` subprocesses, each with the variables its
launcher (srun, mpirun, a Kubernetes operator) would set, on loopback with a free port.

    outputs = run_job([slurm_env(r, 2, port) for r in range(2)], ["run", script, out])

The training script (TRAIN) fits the multi-host tests' toy model with ddp, 4 steps of a
global batch of 32, and rank 0 saves the weights to the .npz named by its argument; the
single-process reference (`reference_weights`) trains the same model in this process.
"""
from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import textwrap

import numpy as np

from tests.multihost.agents import REPO, TOY_MODEL

STEPS, BATCH = 4, 32
TRAIN = textwrap.dedent("""
    import os, socket, sys
    import numpy as np
    import torch.distributed as dist
    import bigtrain
    from bigtrain.layers import Dense, Input
    from bigtrain.models import Model

    TOY_MODEL
    model.fit(x, y, epochs=1, batch_size=BATCH, shuffle=False, verbose=0, strategy="ddp",
              timeout=30)
    if bigtrain.is_main_process():
        np.savez(sys.argv[1], *model.get_weights())
    print(f"TRAINED rank={dist.get_rank()} of {dist.get_world_size()} "
          f"on {socket.gethostname()}", flush=True)
""").replace("TOY_MODEL\n", TOY_MODEL).replace("BATCH", str(BATCH))

#: Variables of any launcher, removed from the ranks' environment before each job's own.
_LAUNCHER_PREFIXES = ("SLURM_", "OMPI_", "PMI_", "PMIX_", "MPI_LOCAL", "TORCHELASTIC_")
_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                  "MASTER_PORT", "KUBERNETES_SERVICE_HOST", "GLOO_SOCKET_IFNAME")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_LAUNCHER_PREFIXES) and k not in _LAUNCHER_VARS}
    path = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    return {**env, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
            **extra}


def slurm_env(rank: int, world: int, port: int, claimed: int | None = None) -> dict:
    """srun's variables for task `rank` of `world` on one node ("localhost"); `claimed`
    overrides the task count SLURM says (a job that promises more ranks than start)."""
    n = claimed or world
    return {"SLURM_PROCID": str(rank), "SLURM_NTASKS": str(n), "SLURM_LOCALID": str(rank),
            "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost", "SLURM_NNODES": "1",
            "SLURM_TASKS_PER_NODE": str(n), "SLURM_JOB_ID": "4242", "MASTER_PORT": str(port)}


def openmpi_env(rank: int, world: int, port: int) -> dict:
    return {"OMPI_COMM_WORLD_RANK": str(rank), "OMPI_COMM_WORLD_SIZE": str(world),
            "OMPI_COMM_WORLD_LOCAL_RANK": str(rank), "OMPI_COMM_WORLD_LOCAL_SIZE": str(world),
            "MASTER_PORT": str(port)}


def pmi_env(rank: int, world: int, port: int) -> dict:
    return {"PMI_RANK": str(rank), "PMI_SIZE": str(world), "MPI_LOCALRANKID": str(rank),
            "MPI_LOCALNRANKS": str(world), "MASTER_PORT": str(port)}


def kubernetes_env(rank: int, world: int, port: int) -> dict:
    """A PyTorchJob's pod: one process, the master's service name (here: loopback)."""
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "KUBERNETES_SERVICE_HOST": "10.96.0.1"}


def run_job(envs: list[dict], argv: list[str], cwd, timeout: float) -> list[tuple[int, str]]:
    """Start `python -m bigtrain.cli.main ARGV` once per environment, all at once; their
    (exit code, output). A rank still running after `timeout` is killed (exit code None)."""
    procs = [subprocess.Popen([sys.executable, "-m", "bigtrain.cli.main", *argv], cwd=cwd,
                              env=clean_env(env), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for env in envs]
    results = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=timeout)
            results.append((proc.returncode, out))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            results.append((None, proc.communicate()[0]))
    return results


def reference_weights(steps: int = STEPS, epochs: int = 1) -> list[np.ndarray]:
    """The same toy model trained in this process for `epochs` epochs of `steps` steps (no
    strategy)."""
    namespace: dict = {}
    exec("import numpy as np, bigtrain\nfrom bigtrain.layers import Dense, Input\n"
         "from bigtrain.models import Model\n" + TOY_MODEL, namespace)
    model, x, y = namespace["model"], namespace["x"], namespace["y"]
    model.fit(x[:steps * BATCH], y[:steps * BATCH], epochs=epochs, batch_size=BATCH,
              shuffle=False, verbose=0)
    return model.get_weights()


def max_diff(a: list, b: list) -> float:
    return max(float(np.abs(np.asarray(u) - np.asarray(v)).max()) for u, v in zip(a, b))


def srun_tasks(sbatch: str, nodelist: str, hosts: int, job_id: str) -> tuple[list, list[str]]:
    """What srun would start for an sbatch script's step on `hosts` nodes named by
    `nodelist`: ([SLURM variables of each task, in rank order], the argv after `bigtrain`).

    Reads the script's #SBATCH --nodes / --ntasks-per-node and its `srun ...` line (srun's
    own options dropped); tasks are numbered node by node, as srun's block distribution does.
    """
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)$", sbatch, re.MULTILINE))
    nodes, per_node = int(directives["nodes"]), int(directives["ntasks-per-node"])
    assert nodes == hosts, (directives, hosts)
    srun = next(shlex.split(line) for line in sbatch.splitlines() if line.startswith("srun "))
    command = [a for a in srun[1:] if not a.startswith("--kill-on-bad-exit")]
    assert command[0] == "bigtrain", srun
    world = nodes * per_node
    tasks = [{"SLURM_PROCID": str(node * per_node + local), "SLURM_NTASKS": str(world),
              "SLURM_NPROCS": str(world), "SLURM_LOCALID": str(local), "SLURM_NODEID": str(node),
              "SLURM_NODELIST": nodelist, "SLURM_STEP_NODELIST": nodelist,
              "SLURM_NNODES": str(nodes), "SLURM_TASKS_PER_NODE": f"{per_node}(x{nodes})",
              "SLURM_JOB_ID": job_id, "SLURM_STEP_ID": "0"}
             for node in range(nodes) for local in range(per_node)]
    return tasks, command[1:]
