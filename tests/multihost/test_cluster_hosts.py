"""Jobs that a cluster launcher started, across two simulated hosts (network namespaces with
their own hostnames and addresses, see netns.py): each host runs `bigtrain run` with only
the variables its launcher would set, and ddp over the two matches one process.

    host0 (10.a.b.1, eth0) <--- veth ---> host1 (10.a.b.2, eth0)

- SLURM: `bigtrain slurm train.py --nodes 2` writes the sbatch script; its srun line runs on
  each host with srun's variables (SLURM_NODELIST=host[0-1]): rank 0 is found on host0 and
  its port derived from the job id (no MASTER_* given);
- Open MPI: OMPI_COMM_WORLD_* with one rank per host and MASTER_ADDR=host0, as
  `mpirun -x MASTER_ADDR` passes it;
- Kubernetes: a PyTorchJob's pods (RANK, WORLD_SIZE, MASTER_ADDR=host0, MASTER_PORT).
Needs root and iproute2; skipped otherwise.
"""
import os
import re
import secrets
import subprocess
import sys

import numpy as np
import pytest

from bigtrain.cli.main import main as bigtrain_cli
from tests.launch.jobs import TRAIN, clean_env, max_diff, reference_weights, srun_tasks

LIMIT_S = 180  # two hosts start torch and train 4 steps on a loaded 2-core machine


def _openmpi(rank: int, port: int) -> dict:
    return {"OMPI_COMM_WORLD_RANK": str(rank), "OMPI_COMM_WORLD_SIZE": "2",
            "OMPI_COMM_WORLD_LOCAL_RANK": "0", "OMPI_COMM_WORLD_LOCAL_SIZE": "1",
            "MASTER_ADDR": "host0", "MASTER_PORT": str(port)}


def _kubernetes(rank: int, port: int) -> dict:
    return {"RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "host0",
            "MASTER_PORT": str(port), "KUBERNETES_SERVICE_HOST": "10.96.0.1"}


def _slurm_job(tmp_path) -> tuple[list[dict], list[str]]:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        bigtrain_cli(["slurm", "train.py", "--nodes", "2", "--join-timeout", "90", "--",
                      "weights.npz"])
    finally:
        os.chdir(cwd)
    job_id = str(secrets.SystemRandom().randint(1000, 99999))
    return srun_tasks((tmp_path / "train.sbatch").read_text(), "host[0-1]", 2, job_id)


@pytest.mark.slow
@pytest.mark.timeout(LIMIT_S + 60)
@pytest.mark.parametrize("launcher", ["slurm", "openmpi", "kubernetes"])
def test_two_hosts_started_by_a_launcher_train_ddp_like_one_process(hosts, tmp_path,
                                                                    launcher):
    (tmp_path / "train.py").write_text(TRAIN)
    port = secrets.SystemRandom().randint(20000, 40000)  # the namespaces' own ports
    if launcher == "slurm":
        envs, argv = _slurm_job(tmp_path)
    else:
        make = _openmpi if launcher == "openmpi" else _kubernetes
        envs = [make(r, port) for r in range(2)]
        argv = ["run", "--join-timeout", "90", "train.py", "weights.npz"]
    procs = [host.popen([sys.executable, "-m", "bigtrain.cli.main", *argv], cwd=tmp_path,
                        env=clean_env({**env, "GLOO_SOCKET_IFNAME": host.ifname}),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for host, env in zip(hosts, envs)]
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=LIMIT_S)[0])
        except subprocess.TimeoutExpired:
            proc.kill()
            outputs.append(proc.communicate()[0] + "\n[killed]")
    report = "\n".join(f"--- host{i} exit {p.returncode}\n{out[-3000:]}"
                       for i, (p, out) in enumerate(zip(procs, outputs)))
    assert [p.returncode for p in procs] == [0, 0], report
    assert [re.search(r"TRAINED rank=(\d) of 2 on (\S+)", out).groups() for out in outputs] \
        == [("0", "host0"), ("1", "host1")], report
    with np.load(tmp_path / "weights.npz") as saved:
        trained = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    assert max_diff(trained, reference_weights()) <= 1e-5
