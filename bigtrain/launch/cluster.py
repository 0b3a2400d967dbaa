"""Join the process group of a job a cluster launcher started (SLURM, MPI, Kubernetes).

`join_cluster(cluster, join_timeout_s)` hands torch the env:// variables the ClusterEnv
derived, then joins through bigtrain's usual path (rank 0 hosts a TCPStore at MASTER_ADDR:
MASTER_PORT, every rank announces itself, `init_process_group`). Ranks that never start are
named within `join_timeout_s`, together with the launcher variable that promised them:

    SLURM_NTASKS=4 says the job has 4 ranks, but ranks 2, 3 of 4 never joined ...

A script run afterwards (`bigtrain run`) finds the group formed: `fit` joins it as it is.
"""
from __future__ import annotations

import os

from bigtrain.launch.environments import ClusterEnv, ClusterEnvError

#: Collective timeout once the group formed (bigtrain's default for launched jobs).
GROUP_TIMEOUT_S = 300.0


def join_cluster(cluster: ClusterEnv, join_timeout_s: float,
                 group_timeout_s: float = GROUP_TIMEOUT_S):
    """Form this rank's process group from `cluster`; returns its DistEnv.

    Args:
        cluster: what `environments.detect()` found.
        join_timeout_s: seconds every rank has to arrive (`bigtrain run --join-timeout`).
        group_timeout_s: seconds a collective may wait once the group formed.

    Raises ClusterEnvError naming the variable behind a rank count or address that did not
    hold (ranks that never came, a rank 0 that cannot be reached).

    Example:
        env = join_cluster(detect(), join_timeout_s=120)
    """
    from bigtrain.launch.join import join_existing_job
    from bigtrain.launch.loopback import is_loopback
    os.environ.update(cluster.torch_env())
    if is_loopback(cluster.master_addr):  # one host: gloo's pairs on loopback too
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    try:
        return join_existing_job(timeout_s=join_timeout_s, group_timeout_s=group_timeout_s)
    except RuntimeError as e:
        raise ClusterEnvError(not_gathered(cluster, str(e), join_timeout_s)) from None


_HINTS = {
    "slurm": "srun starts one task per rank: check #SBATCH --nodes / --ntasks-per-node (or "
             "srun -n) and that the command runs under srun, not directly in the batch script",
    "openmpi": "mpirun -np N starts N ranks: check -np and the hosts given to mpirun",
    "pmi": "mpiexec -n N starts N ranks: check -n and the hosts given to mpiexec",
    "kubernetes": "the operator sets WORLD_SIZE from the job's replicas: check that every "
                  "replica (pod) is scheduled and runs the same command",
    "env": "WORLD_SIZE must equal the number of processes started, each with its own RANK",
}


def not_gathered(cluster: ClusterEnv, error: str, join_timeout_s: float) -> str:
    """The one message for a job whose ranks did not all arrive (or could not reach rank 0)."""
    what = error.split(". ")[0].rstrip(".")
    if "never joined" in what:
        return (f"{cluster.source('world_size')} says the job has {cluster.world_size} ranks, "
                f"but {what}. {_HINTS[cluster.kind]}; or raise --join-timeout "
                f"({join_timeout_s:g} s) if ranks start slowly.")
    return (f"{what}. Rank 0 listens at {cluster.master_addr}:{cluster.master_port} "
            f"({cluster.source('master_addr')}; {cluster.source('master_port')}): check that "
            f"rank 0 started and that this host reaches it; set MASTER_ADDR / MASTER_PORT on "
            f"every rank to override.")


__all__ = ["ClusterEnvError", "join_cluster", "not_gathered"]
