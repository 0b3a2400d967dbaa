"""Jobs that something else started: read the rank layout from the launcher's variables.

    launcher                 variables read (first found wins)
    SLURM (srun)             SLURM_PROCID, SLURM_NTASKS (or SLURM_NPROCS), SLURM_LOCALID,
                             SLURM_NODEID, SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE,
                             SLURM_STEP_NODELIST / SLURM_NODELIST (`node[01-03,7]`), SLURM_JOB_ID
    Open MPI (mpirun)        OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE
    MPICH / Intel MPI (PMI)  PMI_RANK, PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS
    Kubernetes operators,    RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK,
    env:// convention        LOCAL_WORLD_SIZE (one process per pod unless LOCAL_* say more)

`detect()` turns them into a ClusterEnv; its `torch_env()` is the env:// variables torch's
own rendezvous reads (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK,
LOCAL_WORLD_SIZE), so the process group is formed by torch.distributed (a TCPStore on rank
0's host, then `init_process_group`), as under torchrun. MPI launchers come first: `mpirun`
inside a SLURM allocation inherits the batch step's SLURM_PROCID=0 on every rank. A process
that torchrun started (TORCHELASTIC_RUN_ID) is torchrun's business: nothing is detected.

Where rank 0 listens: MASTER_ADDR when set, else SLURM's first host, else 127.0.0.1 when every
rank is on this host; the port: MASTER_PORT when set, else one derived from the job's id (the
same on every rank, different for concurrent jobs), else torch's 29500.
"""
from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from bigtrain.launch.hostlist import expand_hostlist, expand_tasks_per_node

TORCH_DEFAULT_PORT = 29500
_PORT_BASE, _PORT_SPAN = 20000, 20000  # job-derived ports fall in 20000..39999


class ClusterEnvError(ValueError):
    """The launcher's variables are missing, malformed or contradict each other."""


@dataclass(frozen=True)
class ClusterEnv:
    """This process's place in a job a cluster launcher started.

    Attributes:
        kind: "slurm", "openmpi", "pmi", "kubernetes" or "env" (the env:// convention).
        rank: global rank, 0..world_size-1.
        world_size: ranks in the job.
        local_rank: rank on this host.
        local_world_size: ranks on this host.
        master_addr: host of rank 0 (it hosts the job's store).
        master_port: the store's port.
        sources: (field, where it came from) pairs, e.g. ("world_size", "SLURM_NTASKS=4").
        hosts: the job's hosts, where the launcher names them (SLURM).
    """
    kind: str
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    sources: tuple[tuple[str, str], ...] = ()
    hosts: tuple[str, ...] = ()

    def __post_init__(self):
        src = self.source
        if self.world_size < 1:
            raise ClusterEnvError(f"{src('world_size')}: a job has at least one rank")
        if not 0 <= self.rank < self.world_size:
            raise ClusterEnvError(
                f"{src('rank')} but {src('world_size')}: ranks run 0..{self.world_size - 1}. "
                "The variables come from different jobs or steps; start the command through "
                "the launcher (srun / mpirun) instead of copying its variables")
        if not 1 <= self.local_world_size <= self.world_size:
            raise ClusterEnvError(f"{src('local_world_size')} but {src('world_size')}: a host "
                                  f"runs 1..{self.world_size} of the job's ranks")
        if not 0 <= self.local_rank < self.local_world_size:
            raise ClusterEnvError(f"{src('local_rank')} but {src('local_world_size')}: local "
                                  f"ranks run 0..{self.local_world_size - 1}")
        if not 1 <= self.master_port <= 65535:
            raise ClusterEnvError(f"{src('master_port')} is not a TCP port (1..65535)")

    def source(self, field: str) -> str:
        """Where `field` came from ("SLURM_NTASKS=4"), or "default"."""
        return dict(self.sources).get(field, "default")

    @property
    def launcher(self) -> str:
        return {"slurm": "SLURM (srun)", "openmpi": "Open MPI (mpirun)",
                "pmi": "MPICH / Intel MPI (PMI)", "kubernetes": "Kubernetes (env://)",
                "env": "torch env:// variables"}[self.kind]

    def torch_env(self) -> dict[str, str]:
        """The env:// variables torch (and bigtrain's join) read, for this rank."""
        return {"RANK": str(self.rank), "WORLD_SIZE": str(self.world_size),
                "LOCAL_RANK": str(self.local_rank),
                "LOCAL_WORLD_SIZE": str(self.local_world_size),
                "MASTER_ADDR": self.master_addr, "MASTER_PORT": str(self.master_port)}

    def describe(self) -> str:
        """What `bigtrain run --print-env` prints: each figure and where it came from."""
        rows = [("rank", f"{self.rank} of {self.world_size}",
                 f"{self.source('rank')}, {self.source('world_size')}"),
                ("local rank", f"{self.local_rank} of {self.local_world_size}",
                 f"{self.source('local_rank')}, {self.source('local_world_size')}"),
                ("rank 0 at", f"{self.master_addr}:{self.master_port}",
                 f"{self.source('master_addr')}, {self.source('master_port')}")]
        if self.hosts:
            shown = ", ".join(self.hosts[:8]) + (", ..." if len(self.hosts) > 8 else "")
            rows.insert(2, ("hosts", f"{len(self.hosts)}: {shown}", self.source("hosts")))
        lines = [f"bigtrain run: {self.launcher} job"]
        lines += [f"  {name:<11} {value:<22} from {where}" for name, value, where in rows]
        torch_vars = " ".join(f"{k}={v}" for k, v in self.torch_env().items())
        lines.append(f"  torch's env:// variables for this rank: {torch_vars}")
        return "\n".join(lines)


def _int(env: Mapping[str, str], *names: str) -> tuple[int, str] | None:
    """(value, "NAME=value") of the first of `names` set in `env`; None when none is."""
    for name in names:
        raw = env.get(name, "").strip()
        if raw:
            try:
                return int(raw), f"{name}={raw}"
            except ValueError:
                raise ClusterEnvError(f"{name}={raw!r} is not a whole number; the launcher "
                                      f"sets it to one (unset {name} if you set it)") from None
    return None


def _need(env: Mapping[str, str], *names: str) -> tuple[int, str]:
    found = _int(env, *names)
    if found is None:
        raise ClusterEnvError(f"{' or '.join(names)} is not set, but the other variables of "
                              "this launcher are: start the command through the launcher")
    return found


def _port(env: Mapping[str, str], *job_ids: tuple[str, str | None]) -> tuple[int, str]:
    """MASTER_PORT, else a port derived from the first (name, value) job id that has a value
    (the same on every rank of a job)."""
    given = _int(env, "MASTER_PORT")
    if given is not None:
        return given
    for name, value in job_ids:
        if value:
            port = _PORT_BASE + zlib.crc32(value.encode()) % _PORT_SPAN
            return port, f"derived from {name}={value} (set MASTER_PORT to choose)"
    return TORCH_DEFAULT_PORT, f"torch's default {TORCH_DEFAULT_PORT} (set MASTER_PORT)"


def _slurm(env: Mapping[str, str]) -> dict | None:
    if "SLURM_PROCID" not in env or not (env.get("SLURM_NTASKS") or env.get("SLURM_NPROCS")):
        return None
    f = {"rank": _need(env, "SLURM_PROCID"), "world_size": _need(env, "SLURM_NTASKS",
                                                                 "SLURM_NPROCS")}
    ntasks, nprocs = _int(env, "SLURM_NTASKS"), _int(env, "SLURM_NPROCS")
    if ntasks and nprocs and ntasks[0] != nprocs[0]:
        raise ClusterEnvError(f"{ntasks[1]} but {nprocs[1]}: SLURM sets both to the number of "
                              "tasks; one of them was changed by hand")
    f["local_rank"] = _int(env, "SLURM_LOCALID") or (0, "default 0 (no SLURM_LOCALID)")
    hosts = _slurm_hosts(env, f)
    f["local_world_size"] = _slurm_local_world(env, f, hosts)
    f["master_addr"] = ((env["MASTER_ADDR"], f"MASTER_ADDR={env['MASTER_ADDR']}")
                        if env.get("MASTER_ADDR") else
                        (hosts[0], f"the first host of {f['hosts'][1]}") if hosts else
                        _no_master_addr("SLURM_NODELIST is not set"))
    job, step = env.get("SLURM_JOB_ID"), env.get("SLURM_STEP_ID")
    # with the step: two steps of one job may run at once
    f["master_port"] = _port(env, ("SLURM_JOB_ID.SLURM_STEP_ID", f"{job}.{step}")
                             if job and step else ("SLURM_JOB_ID", job))
    return f


def _slurm_hosts(env: Mapping[str, str], f: dict) -> list[str]:
    """The step's hosts; each list checked against the node count of the same scope."""
    for name, count_name in (("SLURM_STEP_NODELIST", "SLURM_STEP_NUM_NODES"),
                             ("SLURM_NODELIST", "SLURM_NNODES"),
                             ("SLURM_JOB_NODELIST", "SLURM_JOB_NUM_NODES")):
        if env.get(name):
            try:
                hosts = expand_hostlist(env[name])
            except ValueError as e:
                raise ClusterEnvError(f"{name}: {e}") from None
            f["hosts"] = (tuple(hosts), f"{name}={env[name]}")
            count = _int(env, count_name)
            if count and count[0] != len(hosts):
                raise ClusterEnvError(f"{name}={env[name]} names {len(hosts)} host(s) but "
                                      f"{count[1]}: the variables come from different steps")
            return hosts
    return []


def _slurm_local_world(env: Mapping[str, str], f: dict, hosts: list[str]) -> tuple[int, str]:
    """Tasks on this node: SLURM_STEP_TASKS_PER_NODE (`2(x3),1`) at SLURM_NODEID."""
    world, world_src = f["world_size"]
    for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        if not env.get(name):
            continue
        try:
            counts = expand_tasks_per_node(env[name])
        except ValueError as e:
            raise ClusterEnvError(f"{name}: {e}") from None
        if sum(counts) != world:
            raise ClusterEnvError(f"{name}={env[name]} adds up to {sum(counts)} tasks but "
                                  f"{world_src}: the variables come from different steps")
        if hosts and len(counts) != len(hosts):
            raise ClusterEnvError(f"{name}={env[name]} covers {len(counts)} node(s) but "
                                  f"{f['hosts'][1]} names {len(hosts)}")
        node, node_src = _int(env, "SLURM_NODEID") or (0, "SLURM_NODEID unset")
        if not 0 <= node < len(counts):
            raise ClusterEnvError(f"{node_src} but {name}={env[name]} covers nodes "
                                  f"0..{len(counts) - 1}")
        return counts[node], f"{name}={env[name]} at {node_src}"
    per_node = _int(env, "SLURM_NTASKS_PER_NODE")
    if per_node:
        return per_node
    nodes = max(1, len(hosts))
    return -(-world // nodes), f"{world_src} over {nodes} node(s)"


def _mpi(env: Mapping[str, str], rank: tuple[str, ...], size: tuple[str, ...],
         local: tuple[str, ...], local_size: tuple[str, ...]) -> dict:
    f = {"rank": _need(env, *rank), "world_size": _need(env, *size),
         "local_rank": _int(env, *local) or (0, f"default 0 (no {local[0]})")}
    f["local_world_size"] = _int(env, *local_size) or (
        f["world_size"][0], f"{f['world_size'][1]} (no {local_size[0]}: one host)")
    if env.get("MASTER_ADDR"):
        f["master_addr"] = env["MASTER_ADDR"], f"MASTER_ADDR={env['MASTER_ADDR']}"
    elif f["local_world_size"][0] == f["world_size"][0]:
        f["master_addr"] = "127.0.0.1", f"every rank on this host ({f['local_world_size'][1]})"
    elif env.get("SLURM_JOB_NODELIST"):  # mpirun inside a SLURM allocation maps rank 0 first
        nodes = env["SLURM_JOB_NODELIST"]
        f["master_addr"] = (expand_hostlist(nodes)[0],
                            f"the first host of SLURM_JOB_NODELIST={nodes}")
    else:
        _no_master_addr(f"{f['world_size'][1]} spans hosts ({f['local_world_size'][1]}) and "
                        "MPI does not say where rank 0 runs")
    f["master_port"] = _port(env, *((n, env.get(n)) for n in (
        "PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid", "SLURM_JOB_ID", "PMI_KVSNAME")))
    return f


def _openmpi(env: Mapping[str, str]) -> dict | None:
    if "OMPI_COMM_WORLD_RANK" not in env:
        return None
    return _mpi(env, ("OMPI_COMM_WORLD_RANK",), ("OMPI_COMM_WORLD_SIZE",),
                ("OMPI_COMM_WORLD_LOCAL_RANK",), ("OMPI_COMM_WORLD_LOCAL_SIZE",))


def _pmi(env: Mapping[str, str]) -> dict | None:
    if "PMI_RANK" not in env:
        return None
    return _mpi(env, ("PMI_RANK",), ("PMI_SIZE",), ("MPI_LOCALRANKID",), ("MPI_LOCALNRANKS",))


def _torch_vars(env: Mapping[str, str]) -> dict | None:
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not env.get(name):
            raise ClusterEnvError(f"RANK and WORLD_SIZE are set but {name} is not: the "
                                  "env:// convention (Kubernetes training operators, torch) "
                                  "needs MASTER_ADDR and MASTER_PORT, rank 0's host and port")
    f = {"rank": _need(env, "RANK"), "world_size": _need(env, "WORLD_SIZE"),
         "master_addr": (env["MASTER_ADDR"], f"MASTER_ADDR={env['MASTER_ADDR']}"),
         "master_port": _need(env, "MASTER_PORT")}
    f["local_rank"] = _int(env, "LOCAL_RANK") or (0, "default 0 (no LOCAL_RANK)")
    f["local_world_size"] = _int(env, "LOCAL_WORLD_SIZE") or (
        (1, "default 1 (one process per pod)") if "LOCAL_RANK" not in env else
        (f["world_size"][0], f"{f['world_size'][1]} (no LOCAL_WORLD_SIZE: one host)"))
    return f


def _no_master_addr(why: str):
    raise ClusterEnvError(f"{why}: set MASTER_ADDR to rank 0's host name or address on every "
                          "rank (mpirun -x MASTER_ADDR=<host> -x MASTER_PORT=<port>, or "
                          "export it in the batch script)")


_READERS = (("openmpi", _openmpi), ("pmi", _pmi), ("slurm", _slurm), ("env", _torch_vars))


def detect(environ: Mapping[str, str] | None = None) -> ClusterEnv | None:
    """The job this process belongs to, from its launcher's variables; None when no cluster
    launcher started it (or torchrun did: its agent forms the group).

    Raises ClusterEnvError when variables are malformed or contradict each other, naming them.

    Example:
        >>> env = detect({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0",
        ...               "SLURM_NODEID": "1", "SLURM_NODELIST": "n[1-2]",
        ...               "SLURM_TASKS_PER_NODE": "1(x2)", "MASTER_PORT": "29400"})
        >>> env.rank, env.master_addr, env.local_world_size
        (1, 'n1', 1)
    """
    env = os.environ if environ is None else environ
    if env.get("TORCHELASTIC_RUN_ID"):
        return None
    for kind, reader in _READERS:
        fields = reader(env)
        if fields is None:
            continue
        if kind == "env" and env.get("KUBERNETES_SERVICE_HOST"):
            kind = "kubernetes"
        hosts = fields.pop("hosts", ((), ""))
        sources = tuple((k, v[1]) for k, v in fields.items()) + (("hosts", hosts[1]),)
        found = ClusterEnv(kind=kind, hosts=hosts[0], sources=sources,
                           **{k: v[0] for k, v in fields.items()})
        if kind not in ("env", "kubernetes"):
            _check_torch_vars_agree(env, found)
        return found
    return None


def _check_torch_vars_agree(env: Mapping[str, str], found: ClusterEnv) -> None:
    """RANK / WORLD_SIZE / LOCAL_RANK set beside a launcher's own must say the same."""
    for var, field in (("RANK", "rank"), ("WORLD_SIZE", "world_size"),
                       ("LOCAL_RANK", "local_rank")):
        given = _int(env, var)
        if given is not None and given[0] != getattr(found, field):
            raise ClusterEnvError(
                f"{given[1]} but {found.source(field)}: two launchers disagree about this "
                f"process. Unset {var} (bigtrain derives it from the {found.launcher} "
                "variables) or start the command through one launcher only")
