"""`fit(..., cluster="ray", devices=N)`: the N ranks run as Ray Train workers.

Needs the extra `bigtrain[ray]` (ray[train]). The driver (the process calling fit) connects
to the Ray cluster `ray.init()` finds (RAY_ADDRESS, or an instance already started in this
process, else a new local one) and hands the task to `ray.train.torch.TorchTrainer`:

- Ray starts the workers (one CPU each, or one GPU each where the cluster has N GPUs and
  `devices` is not "cpu") and forms their torch process group (gloo / NCCL);
- each worker runs bigtrain's own rank code (`engine.loop.run_rank`) in that group, as a
  rank started by torchrun would;
- rank 0's result (full weights, History, the learning rate and schedule step it ended
  with) comes back as a Ray Checkpoint: weights as safetensors, the rest as JSON, stored
  under fit's `checkpoint_dir` (`<dir>/ray/`) or a temporary folder when there is none
  (one-node clusters only: a multi-node cluster needs storage every node sees, so fit
  refuses to start there without `checkpoint_dir`).

Failures: `max_restarts=K` becomes Ray's `FailureConfig(max_failures=K)`: when a worker dies,
Ray restarts the whole worker group and bigtrain resumes from the newest checkpoint in
`checkpoint_dir` (resume="auto"). bigtrain's own checkpoints are DCP folders in
`checkpoint_dir`; they are not reported to Ray one by one (only the final result is).
`timeout` becomes the process group's timeout (`TorchConfig(timeout_s=...)`).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid

CLUSTER_ENV, WORKERS_ENV = "BIGTRAIN_CLUSTER", "BIGTRAIN_RAY_WORKERS"  # bigtrain run --ray
GROUP_TIMEOUT_S = 300  # bigtrain's collective timeout for launched jobs (Ray's is 1800)
_WEIGHTS, _RECORD = "weights.safetensors", "history.json"


def import_ray():
    """ray and ray.train, or ImportError saying how to install them."""
    try:
        import ray
        import ray.train.torch  # noqa: F401 - TorchTrainer lives there
    except ImportError as e:
        raise ImportError(f"fit(cluster='ray') needs Ray Train: pip install 'bigtrain[ray]' "
                          f"(ray[train]); importing it failed: {e}") from None
    return ray


def cluster_defaults(cluster, devices):
    """fit's (cluster, devices) with the defaults `bigtrain run --ray ADDRESS [--workers N]`
    set for the script it runs: cluster "ray", and N workers where fit names no devices.
    What the script passes to fit wins."""
    if cluster is None and os.environ.get(CLUSTER_ENV) == "ray":
        cluster = "ray"
    workers = os.environ.get(WORKERS_ENV)
    if cluster == "ray" and devices is None and workers:
        devices = int(workers)
    return cluster, devices


def check_cluster(cluster) -> None:
    """Refuse an unknown `cluster` (and a missing Ray) before any rank starts."""
    if cluster is None:
        return
    if cluster != "ray":
        raise ValueError(f"fit(cluster={cluster!r}): the one cluster fit starts ranks on is "
                         "'ray'. Under SLURM, MPI or Kubernetes start the script with "
                         "`bigtrain run SCRIPT` on every rank instead (no cluster= needed).")
    import_ray()


def _train_loop(config: dict) -> None:
    """One Ray Train worker: bigtrain's rank in the group Ray formed; rank 0 reports back."""
    import ray.train

    from bigtrain.launch.join import DEVICE_ENV, join_existing_job
    os.environ[DEVICE_ENV] = config["device_kind"]
    env = join_existing_job(config["timeout"])  # Ray's process group: joined as it is
    result = config["run_fn"](config["task"], config["strategy"], config["owner"], env)
    last = {k: v[-1] for k, v in result.history.items() if v}
    with tempfile.TemporaryDirectory(prefix="bigtrain-ray-") as folder:
        checkpoint = None
        if env.rank == 0:
            _save_result(result, folder)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(last, checkpoint=checkpoint)  # every worker: it is a barrier


def _save_result(result, folder: str) -> None:
    from safetensors.torch import save_file
    state = {k: v.detach().cpu().contiguous() for k, v in (result.state_dict or {}).items()}
    save_file(state, os.path.join(folder, _WEIGHTS))
    with open(os.path.join(folder, _RECORD), "w", encoding="utf-8") as f:
        json.dump({"history": result.history, "epochs": result.epochs,
                   "stats": result.stats, "stop_reason": result.stop_reason,
                   # what the caller's next fit starts from (bigtrain.engine.carry)
                   "learning_rate": result.learning_rate, "iterations": result.iterations},
                  f, default=float)


def _load_result(folder: str):
    from safetensors.torch import load_file

    from bigtrain.engine.loop import FitResult
    with open(os.path.join(folder, _RECORD), encoding="utf-8") as f:
        record = json.load(f)
    return FitResult(history=record["history"], epochs=record["epochs"],
                     state_dict=load_file(os.path.join(folder, _WEIGHTS)),
                     stats=record["stats"], stop_reason=record.get("stop_reason"),
                     learning_rate=record.get("learning_rate"),
                     iterations=record.get("iterations"))


def _use_gpu(ray, devices, nprocs: int) -> bool:
    if devices == "cpu":
        return False
    return ray.cluster_resources().get("GPU", 0) >= nprocs


def _storage(ray, task) -> str:
    """Where Ray keeps the result checkpoint: under checkpoint_dir, else a temporary folder
    (refused on a multi-node cluster, where each node would see another folder)."""
    if task.checkpoint is not None:
        return os.path.abspath(os.path.join(task.checkpoint.directory, "ray"))
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1:
        raise ValueError(f"fit(cluster='ray') on a {len(nodes)}-node Ray cluster needs "
                         "checkpoint_dir=<a folder every node sees> (shared filesystem): "
                         "rank 0's weights come back through it")
    return tempfile.mkdtemp(prefix="bigtrain-ray-")


def launch_on_ray(task, strategy, nprocs: int, *, model_owner, devices=None, run_fn=None,
                  max_restarts: int = 0, timeout: float | None = None):
    """Run `run_fn(task, strategy, owner, env)` on `nprocs` Ray Train workers; rank 0's
    FitResult (as the local launcher's `launch` returns it).

    Args:
        task: the engine's TrainTask (travels to the workers through Ray's object store).
        strategy: the Strategy (set up on every worker).
        nprocs: number of workers (ranks).
        model_owner: the user's model object (callbacks see it on each rank).
        devices: fit's `devices` ("cpu" keeps the workers on CPUs).
        run_fn: the engine's `run_rank` (default).
        max_restarts: Ray's FailureConfig(max_failures=...).
        timeout: the process group's timeout in seconds.

    Example:
        result = launch_on_ray(task, resolve_strategy("ddp"), 2, model_owner=model)
    """
    ray = import_ray()
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer
    if run_fn is None:
        from bigtrain.engine.loop import run_rank as run_fn  # noqa: PLC0415 - runtime hand-off
    if not ray.is_initialized():
        ray.init()  # RAY_ADDRESS when set, else a local instance
    use_gpu = _use_gpu(ray, devices, nprocs)
    storage = _storage(ray, task)
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"run_fn": run_fn, "task": task, "strategy": strategy,
                           "owner": model_owner, "timeout": timeout,
                           "device_kind": "cuda" if use_gpu else "cpu"},
        torch_config=TorchConfig(timeout_s=int(timeout or GROUP_TIMEOUT_S)),
        scaling_config=ScalingConfig(num_workers=nprocs, use_gpu=use_gpu),
        run_config=RunConfig(name=f"bigtrain-{uuid.uuid4().hex[:8]}", storage_path=storage,
                             failure_config=FailureConfig(max_failures=max_restarts)))
    try:
        outcome = trainer.fit()
        with outcome.checkpoint.as_directory() as folder:
            return _load_result(folder)
    except TrainingFailedError as e:  # a worker failed more than max_restarts times
        raise RuntimeError(f"distributed fit on Ray failed: {e}") from None
    finally:
        if task.checkpoint is None:  # our temporary folder
            shutil.rmtree(storage, ignore_errors=True)


__all__ = ["check_cluster", "import_ray", "launch_on_ray"]
