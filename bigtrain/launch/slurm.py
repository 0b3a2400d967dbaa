"""The sbatch script behind `bigtrain slurm SCRIPT --nodes 2 --gpus-per-node 8`.

One SLURM task per rank (per GPU where there are GPUs): srun starts them all, each runs
`bigtrain run SCRIPT`, which reads SLURM_PROCID / SLURM_NTASKS / SLURM_NODELIST and joins
the job's process group (bigtrain.launch.environments). Rank 0 listens on the first node
at a port derived from the job id (export MASTER_PORT in `setup` to choose it).

    job = SbatchJob("train.py", nodes=2, gpus_per_node=8, partition="gpu", time="02:00:00")
    open("train.sbatch", "w").write(job.render())
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass

# SLURM's --time: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
_TIME = re.compile(r"^(\d+-\d{1,2}(:\d{2}){0,2}|\d+(:\d{2}){0,2})$")


@dataclass(frozen=True)
class SbatchJob:
    """An sbatch job that runs `bigtrain run SCRIPT ARGS` as nodes x tasks_per_node ranks.

    Attributes:
        script: the training script (run as `bigtrain run SCRIPT` on every rank).
        script_args: its arguments.
        nodes: nodes to allocate (>= 1).
        gpus_per_node: GPUs per node; one rank each (0: a CPU job).
        tasks_per_node: ranks per node; default gpus_per_node, or 1 without GPUs.
        cpus_per_task: CPU cores per rank (None: SLURM's default).
        partition: SLURM partition (None: the cluster's default).
        time: wall-clock limit in SLURM's format (e.g. "02:00:00", "1-12:00:00").
        job_name: the job's name (default: the script's name without `.py`).
        join_timeout: seconds the ranks have to gather (`bigtrain run --join-timeout`).
        setup: shell lines run before srun (module load, activating an environment...).
        output: sbatch's --output pattern.
    """
    script: str
    script_args: tuple[str, ...] = ()
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None
    cpus_per_task: int | None = None
    partition: str | None = None
    time: str | None = None
    job_name: str | None = None
    join_timeout: float | None = None
    setup: tuple[str, ...] = ()
    output: str = "%x-%j.out"

    def __post_init__(self):
        if self.nodes < 1:
            raise ValueError(f"--nodes must be at least 1, got {self.nodes}")
        if self.gpus_per_node < 0:
            raise ValueError(f"--gpus-per-node must be 0 (a CPU job) or more, got "
                             f"{self.gpus_per_node}")
        if self.tasks_per_node is not None and self.tasks_per_node < 1:
            raise ValueError(f"--tasks-per-node must be at least 1, got {self.tasks_per_node}")
        if self.gpus_per_node and self.tasks_per_node not in (None, self.gpus_per_node):
            raise ValueError(f"--tasks-per-node {self.tasks_per_node} with --gpus-per-node "
                             f"{self.gpus_per_node}: bigtrain runs one rank per GPU; drop "
                             "--tasks-per-node (it follows --gpus-per-node)")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise ValueError(f"--cpus-per-task must be at least 1, got {self.cpus_per_task}")
        if self.time is not None and not _TIME.match(self.time):
            raise ValueError(f"--time {self.time!r} is not a SLURM time: use MM, HH:MM:SS or "
                             "D-HH:MM:SS (e.g. 02:00:00)")
        if not self.script.endswith(".py"):
            raise ValueError(f"the training script must be a .py file, got {self.script!r}")

    @property
    def ranks_per_node(self) -> int:
        return self.tasks_per_node or self.gpus_per_node or 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node

    def srun_argv(self) -> list[str]:
        """The step's command line: srun, then what every task runs."""
        run = ["bigtrain", "run"]
        if self.join_timeout is not None:
            run += ["--join-timeout", f"{self.join_timeout:g}"]
        return ["srun", "--kill-on-bad-exit=1", *run, self.script, *self.script_args]

    def directives(self) -> list[tuple[str, str]]:
        """(option, value) pairs of the #SBATCH lines, in order."""
        name = self.job_name or re.sub(r"\.py$", "", self.script.rsplit("/", 1)[-1])
        pairs = [("job-name", name), ("nodes", str(self.nodes)),
                 ("ntasks-per-node", str(self.ranks_per_node))]
        if self.gpus_per_node:
            pairs.append(("gpus-per-node", str(self.gpus_per_node)))
        if self.cpus_per_task:
            pairs.append(("cpus-per-task", str(self.cpus_per_task)))
        pairs += [(k, v) for k, v in (("partition", self.partition), ("time", self.time)) if v]
        return pairs + [("output", self.output)]

    def render(self) -> str:
        """The sbatch script's text."""
        lines = ["#!/bin/bash"] + [f"#SBATCH --{k}={v}" for k, v in self.directives()]
        lines += ["",
                  f"# {self.world_size} ranks: {self.nodes} node(s) x {self.ranks_per_node} "
                  f"task(s), one rank per task{' and GPU' if self.gpus_per_node else ''}.",
                  "# Every task runs `bigtrain run`, which reads SLURM_PROCID, SLURM_NTASKS "
                  "and SLURM_NODELIST;",
                  "# rank 0 listens on the first node (export MASTER_PORT here to choose "
                  "its port).",
                  "set -euo pipefail", *self.setup,
                  shlex.join(self.srun_argv()), ""]
        return "\n".join(lines)


def submit(path: str) -> str:
    """`sbatch PATH`; its output ("Submitted batch job N"). Raises RuntimeError when sbatch is
    missing or refuses the job."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise RuntimeError(f"sbatch is not on PATH: this host is not a SLURM login node. Copy "
                           f"{path} to one and run `sbatch {path}` there.")
    done = subprocess.run([sbatch, path], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"sbatch {path} failed (exit {done.returncode}): "
                           f"{done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()
