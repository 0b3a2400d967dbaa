"""Where a fit runs: in this process, as one rank of a job a launcher started (torchrun,
`bigtrain run`, SLURM, MPI), or on worker processes that `fit(devices=N)` starts itself.

    runner.py    fit's front half below the Keras API: checks that must fail before any
                 rank starts, then one of the three ways to run (`run_fit`)
    launcher.py  start N local ranks with torch's elastic launcher; the task travels to them
    join.py      join a launched job: process group, threads, this rank's device
    loopback.py  rendezvous stores that listen on loopback only (one host)
    verify.py    `bigtrain verify`: every strategy against single-process training
    environments.py, hostlist.py, cluster.py   a job that SLURM, MPI or Kubernetes started:
                 read its variables, form the process group (`bigtrain run` without flags)
    slurm.py     `bigtrain slurm`: the sbatch script;  ray.py  fit(cluster="ray")

It sits between the API (above) and the engine (below): the engine's `run_rank` is what
every rank runs.
"""
