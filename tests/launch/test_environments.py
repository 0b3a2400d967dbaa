"""What bigtrain reads from SLURM, Open MPI, MPICH/PMI and Kubernetes (env://) variables,
and the errors that name the variable when they are missing or contradict each other."""
import pytest

from bigtrain.cli.main import main as bigtrain_cli
from bigtrain.launch.environments import ClusterEnvError, detect

SLURM = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_NPROCS": "4", "SLURM_LOCALID": "1",
         "SLURM_NODEID": "1", "SLURM_NODELIST": "gpu[07-08]", "SLURM_NNODES": "2",
         "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_JOB_ID": "81", "SLURM_STEP_ID": "0"}
OMPI = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2",
        "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}


def test_slurm_layout_and_rank_0_on_the_first_host():
    env = detect(SLURM)
    assert (env.kind, env.rank, env.world_size) == ("slurm", 3, 4)
    assert (env.local_rank, env.local_world_size) == (1, 2)
    assert env.hosts == ("gpu07", "gpu08") and env.master_addr == "gpu07"
    assert env.torch_env() == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "gpu07",
                               "MASTER_PORT": str(env.master_port)}


def test_the_derived_port_is_the_same_on_every_rank_and_differs_between_jobs():
    ports = {detect({**SLURM, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r % 2),
                     "SLURM_NODEID": str(r // 2)}).master_port for r in range(4)}
    assert len(ports) == 1 and 20000 <= ports.pop() < 40000
    assert detect({**SLURM, "SLURM_JOB_ID": "82"}).master_port != detect(SLURM).master_port
    given = detect({**SLURM, "MASTER_PORT": "29411", "MASTER_ADDR": "10.0.0.9"})
    assert (given.master_addr, given.master_port) == ("10.0.0.9", 29411)
    assert given.source("master_port") == "MASTER_PORT=29411"


def test_open_mpi_on_one_host_uses_loopback_and_wins_over_an_inherited_slurm_step():
    env = detect({**OMPI, "SLURM_PROCID": "0", "SLURM_NTASKS": "1", "MASTER_PORT": "29400"})
    assert (env.kind, env.rank, env.world_size, env.local_rank) == ("openmpi", 1, 2, 1)
    assert env.master_addr == "127.0.0.1"


def test_mpi_across_hosts_needs_master_addr_or_a_slurm_allocation():
    spread = {**OMPI, "OMPI_COMM_WORLD_SIZE": "4"}
    with pytest.raises(ClusterEnvError, match="OMPI_COMM_WORLD_SIZE=4 spans hosts .*"
                                              "set MASTER_ADDR"):
        detect(spread)
    assert detect({**spread, "SLURM_JOB_NODELIST": "cn[3-4]"}).master_addr == "cn3"
    assert detect({**spread, "MASTER_ADDR": "head"}).master_addr == "head"


def test_mpich_pmi():
    env = detect({"PMI_RANK": "2", "PMI_SIZE": "3", "MPI_LOCALRANKID": "0",
                  "MPI_LOCALNRANKS": "1", "MASTER_ADDR": "h0", "MASTER_PORT": "29400"})
    assert (env.kind, env.rank, env.world_size, env.local_world_size) == ("pmi", 2, 3, 1)


def test_kubernetes_operator_variables_one_process_per_pod():
    env = detect({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "job-master-0",
                  "MASTER_PORT": "23456", "KUBERNETES_SERVICE_HOST": "10.96.0.1"})
    assert (env.kind, env.rank, env.local_rank, env.local_world_size) == ("kubernetes", 1, 0, 1)
    assert detect({"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "a",
                   "MASTER_PORT": "1"}).kind == "env"


def test_nothing_and_torchrun_are_not_clusters():
    assert detect({}) is None
    assert detect({"TORCHELASTIC_RUN_ID": "x", "RANK": "0", "WORLD_SIZE": "2"}) is None


@pytest.mark.parametrize("change, message", [
    ({"SLURM_PROCID": "4"}, r"SLURM_PROCID=4 but SLURM_NTASKS=4: ranks run 0..3"),
    ({"SLURM_NPROCS": "2"}, r"SLURM_NTASKS=4 but SLURM_NPROCS=2"),
    ({"SLURM_TASKS_PER_NODE": "2,1"}, r"SLURM_TASKS_PER_NODE=2,1 adds up to 3 tasks but "
                                      r"SLURM_NTASKS=4"),
    ({"SLURM_NNODES": "3"}, r"SLURM_NODELIST=gpu\[07-08\] names 2 host\(s\) but SLURM_NNODES=3"),
    ({"SLURM_NODELIST": "gpu[07-08"}, r"SLURM_NODELIST: .*not closed"),
    ({"SLURM_LOCALID": "2"}, r"SLURM_LOCALID=2 but SLURM_TASKS_PER_NODE=2\(x2\) at "
                             r"SLURM_NODEID=1: local ranks run 0..1"),
    ({"SLURM_NTASKS": "four"}, r"SLURM_NTASKS='four' is not a whole number"),
    ({"RANK": "0"}, r"RANK=0 but SLURM_PROCID=3: two launchers disagree"),
    ({"MASTER_PORT": "70000"}, r"MASTER_PORT=70000 is not a TCP port"),
])
def test_inconsistent_slurm_variables_are_named(change, message):
    with pytest.raises(ClusterEnvError, match=message):
        detect({**SLURM, **change})


def test_env_convention_without_an_address_is_named():
    with pytest.raises(ClusterEnvError, match="RANK and WORLD_SIZE are set but MASTER_ADDR"):
        detect({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ClusterEnvError, match="LOCAL_RANK=2 but LOCAL_WORLD_SIZE=2"):
        detect({"RANK": "0", "WORLD_SIZE": "4", "MASTER_ADDR": "a", "MASTER_PORT": "9",
                "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"})


def test_print_env_shows_each_figure_and_its_variable(monkeypatch, capsys):
    for key, value in SLURM.items():
        monkeypatch.setenv(key, value)
    assert bigtrain_cli(["run", "--print-env"]) == 0
    out = capsys.readouterr().out
    assert "SLURM (srun) job" in out
    assert "rank        3 of 4" in out and "SLURM_PROCID=3, SLURM_NTASKS=4" in out
    assert "gpu07, gpu08" in out and "the first host of SLURM_NODELIST=gpu[07-08]" in out
    assert "RANK=3 WORLD_SIZE=4 LOCAL_RANK=1 LOCAL_WORLD_SIZE=2 MASTER_ADDR=gpu07" in out


def test_print_env_outside_a_cluster_and_with_torchrun_flags(monkeypatch, capsys):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK",
                "PMI_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    assert bigtrain_cli(["run", "--print-env"]) == 0
    assert "no cluster launcher found" in capsys.readouterr().out
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert bigtrain_cli(["run", "--print-env", "--nproc-per-node", "2", "t.py"]) == 0
    assert "torchrun's flags given (--nproc-per-node)" in capsys.readouterr().out


def test_a_bad_environment_and_torchrun_only_flags_end_in_one_line(monkeypatch):
    for key, value in {**SLURM, "SLURM_PROCID": "9"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit, match="bigtrain run: SLURM_PROCID=9 but SLURM_NTASKS=4"):
        bigtrain_cli(["run", "t.py"])
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    monkeypatch.setenv("SLURM_NODEID", "0")
    with pytest.raises(SystemExit, match="--max-restarts 2: torchrun's flags do nothing in a "
                                         r"SLURM \(srun\) job"):
        bigtrain_cli(["run", "--max-restarts", "2", "t.py"])


def test_ranks_that_never_came_are_blamed_on_the_variable_that_promised_them():
    from bigtrain.launch.cluster import not_gathered
    pod = detect({"RANK": "0", "WORLD_SIZE": "4", "MASTER_ADDR": "job-master-0",
                  "MASTER_PORT": "23456", "KUBERNETES_SERVICE_HOST": "10.96.0.1"})
    missing = ("ranks 2, 3 of 4 never joined the job within 5 s (seen from rank 0; 2 arrived). "
               "Start the missing ranks: ...")
    said = not_gathered(pod, missing, 5)
    assert said.startswith("WORLD_SIZE=4 says the job has 4 ranks, but ranks 2, 3 of 4 never "
                           "joined the job within 5 s (seen from rank 0; 2 arrived). ")
    assert "every replica (pod) is scheduled" in said and "--join-timeout (5 s)" in said
    unreachable = ("rank 1 could not reach the job's store at job-master-0:23456 within 5 s: "
                   "rank 0, which hosts it, has not started. Start rank 0 ...")
    said = not_gathered(pod, unreachable, 5)
    assert "Rank 0 listens at job-master-0:23456 (MASTER_ADDR=job-master-0; " \
           "MASTER_PORT=23456)" in said
