"""`fit(..., devices=N)` from a plain script or notebook: start N worker processes with
torch's elastic launcher (function entry point), hand them the task, return rank 0's result.

The worker processes are started with the spawn method, which normally re-imports the
user's `__main__` script; scripts without an `if __name__ == "__main__":` guard would then
train again from the top. bigtrain hides the main module's file while the workers start
(so nothing re-runs) and sends the task with cloudpickle, which carries classes and
functions defined in that script by value. Arrays larger than `spill_bytes` travel as
memory-mapped `.npy` files in a temporary folder instead of inside the payload.

Restarts: with `max_restarts=N` the elastic agent restarts all workers when one dies; the
run resumes from its newest checkpoint when `checkpoint_dir` is set.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import uuid

import cloudpickle
import numpy as np
import torch

from bigtrain.engine.loop import run_rank
from bigtrain.launch.loopback import register_rendezvous

SPILL_BYTES = 64 * 2**20  # arrays above this go through memory-mapped files


@contextlib.contextmanager
def _main_module_hidden():
    """Keep spawned workers from re-running the user's script (see module docstring)."""
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__file__", "__spec__") if main and hasattr(main, k)}
    try:
        if main is not None:
            if hasattr(main, "__file__"):
                del main.__file__
            main.__spec__ = None
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


def _spill(arrays: list, folder: str, tag: str) -> list:
    out = []
    for i, a in enumerate(arrays):
        if isinstance(a, torch.Tensor) and a.numel() * a.element_size() > SPILL_BYTES:
            path = os.path.join(folder, f"{tag}{i}.npy")
            np.save(path, a.numpy())
            a = np.load(path, mmap_mode="r")
        out.append(a)
    return out


def _spill_task_data(task, folder: str) -> None:
    for name in ("train", "val"):
        data = getattr(task, name)
        if data is not None:
            data.xs = _spill(data.xs, folder, f"{name}_x")
            data.ys = _spill(data.ys, folder, f"{name}_y")


def _worker(payload_path: str, timeout_s: float | None):
    """Entry point of every launched rank: join the group, train, return rank 0's result."""
    import torch.distributed as dist

    from bigtrain.launch.join import join_existing_job
    with open(payload_path, "rb") as f:
        run_fn, task, strategy, owner, kind = cloudpickle.load(f)  # our own file, just written
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one host: gloo listens on loopback only
    env = join_existing_job(timeout_s, kind=kind)
    try:
        result = run_fn(task, strategy, owner, env)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if env.rank != 0:
        return None
    # numpy arrays cross the process boundary as plain bytes (no shared-memory handles)
    result.state_dict = {k: v.numpy() for k, v in (result.state_dict or {}).items()}
    return result


def launch(task, strategy, nprocs: int, *, model_owner, run_fn=None, max_restarts: int = 0,
           timeout: float | None = None, start_method: str = "spawn",
           device_kind: str | None = None):
    """Run `run_fn(task, strategy, owner, env)` on `nprocs` local ranks; rank 0's FitResult.

    Args:
        task: the engine's TrainTask.
        strategy: the Strategy (set up again on every rank).
        nprocs: number of processes on this host.
        model_owner: the user's model object (callbacks see it on each rank).
        run_fn: what every rank runs; default the engine's `run_rank`.
        max_restarts: restarts of the whole group after a worker failure.
        timeout: process-group timeout in seconds (collectives fail instead of hanging).
        start_method: how the workers start ("spawn": the user's script never re-runs).
        device_kind: "cpu", "cuda" or "mps" for every rank (None: CUDA where torch sees it);
            it travels in the payload.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch
    if run_fn is None:
        run_fn = run_rank
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")  # restarts need it (2.13)
    with tempfile.TemporaryDirectory(prefix="bigtrain-launch-") as folder:
        _spill_task_data(task, folder)
        payload = os.path.join(folder, "payload.pkl")
        with open(payload, "wb") as f:
            cloudpickle.dump((run_fn, task, strategy, model_owner, device_kind), f)
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nprocs,
                              run_id=f"bigtrain-{uuid.uuid4().hex[:8]}",
                              rdzv_backend=register_rendezvous(),  # listens on loopback only
                              rdzv_endpoint="127.0.0.1:0", max_restarts=max_restarts,
                              monitor_interval=0.1, start_method=start_method,
                              local_addr="127.0.0.1")
        try:
            with _main_module_hidden():
                results = elastic_launch(config, _worker)(payload, timeout)
        except ChildFailedError as e:
            raise RuntimeError(_root_cause(e)) from None
    result = results[0]
    result.state_dict = {k: torch.from_numpy(v) for k, v in result.state_dict.items()}
    return result


def _root_cause(err) -> str:
    rank, failure = err.get_first_failure()
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", message)
    return (f"distributed fit failed on rank {rank} (exit code {failure.exitcode}):\n{message}")
