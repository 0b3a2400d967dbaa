"""`fit(..., devices=N)` from a plain script or notebook: start N worker processes with
torch's elastic launcher (function entry point), hand them the task, return rank 0's result.

The workers are forked from a fork server that imported torch and bigtrain once
(`multiprocessing`'s forkserver start method, started on the first launch and kept for the
life of this process); where there is none (Windows), or with `BIGTRAIN_RANK_START=spawn`,
they are spawned and each imports torch and bigtrain itself. On 2 cores a later
fit(devices=2) call of a small model took 0.26-0.37 s forked against 4-8 s spawned
(bench/bench_launch.py; see also `loopback._no_start_skew` and `join.await_listener`).
Either way the user's `__main__` script never re-runs (scripts often have no
`if __name__ == "__main__":` guard): bigtrain hides the main module's file while the
workers start and sends the task with cloudpickle, which carries classes and functions
defined in that script by value (and modules with torch parametrizations, which torch
will not pickle, as their state: `_Pickler`). Arrays larger than `spill_bytes` travel as
memory-mapped `.npy` files in a temporary folder instead of inside the payload.

A forked worker would otherwise have the fork server's environment and stdout/stderr, the
ones this process had when the server started; each worker takes this process's current
ones instead (`_Caller`, an argument of every worker): the environment as a copy, and
stdout/stderr as file descriptors passed with the worker's start. (Its working folder and
`sys.path` are the caller's already: multiprocessing sends them with every start.)

Restarts: with `max_restarts=N` the elastic agent restarts all workers when one dies; the
run resumes from its newest checkpoint when `checkpoint_dir` is set.
"""
from __future__ import annotations

import contextlib
import gc
import os
import sys
import tempfile
import time
import uuid

import cloudpickle
import numpy as np
import torch
from torch.nn.utils import parametrize as _parametrize

from bigtrain.data.memmaps import memmap_reference, open_memmap
from bigtrain.engine.loop import run_rank
from bigtrain.launch.loopback import register_rendezvous
from bigtrain.launch.parent_watch import follow_multiprocessing_parent

SPILL_BYTES = 64 * 2**20  # arrays above this go through memory-mapped files
# imported once, in the fork server; DDP's constructor imports torch._dynamo (1.4 s of CPU);
# every payload holds a bigtrain Model, whose 44 modules took each worker 0.08 s to import
PRELOAD = ["torch", "torch.distributed", "torch._dynamo", "bigtrain", "bigtrain.api.model"]
_ENV_AT_IMPORT = dict(os.environ)  # in a worker: the environment before the launcher's own
# torch's launcher sets these in every worker; they win over the caller's environment
_LAUNCHER_KEYS = ("RANK", "LOCAL_RANK", "GROUP_RANK", "ROLE_RANK", "ROLE_NAME", "WORLD_SIZE",
                  "LOCAL_WORLD_SIZE", "GROUP_WORLD_SIZE", "ROLE_WORLD_SIZE", "MASTER_ADDR",
                  "MASTER_PORT")


def default_start_method() -> str:
    """"forkserver" where the platform has one, else (or with BIGTRAIN_RANK_START=spawn)
    "spawn"; see the module docstring."""
    import multiprocessing
    if (os.environ.get("BIGTRAIN_RANK_START") == "spawn"
            or "forkserver" not in multiprocessing.get_all_start_methods()):
        return "spawn"
    # no effect once the server runs (it then has whatever it was given first)
    multiprocessing.set_forkserver_preload(PRELOAD)
    return "forkserver"


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


class _Caller:
    """This process's environment and stdout/stderr, for a worker to take on (`adopt`).

    Pickled as a worker starts: stdout and stderr go as duplicated file descriptors that
    the start method passes to that worker (`multiprocessing.reduction.DupFd`), so a
    worker forked from a fork server writes where this process writes now (a terminal, a
    pipe, pytest's capture), not where the server's stdio points."""

    def __init__(self):
        self.env = dict(os.environ)
        self.stdio = None

    def __reduce__(self):
        from multiprocessing import context, reduction
        stdio = None
        popen = context.get_spawning_popen()  # set while a worker's start pickles this
        if getattr(popen, "method", None) == "forkserver":  # spawned: it has ours already
            stdio = tuple(reduction.DupFd(fd) if _is_open(fd) else None for fd in (1, 2))
        return (_Caller._rebuild, (self.env, stdio))

    @staticmethod
    def _rebuild(env, stdio):
        caller = _Caller.__new__(_Caller)
        caller.env, caller.stdio = env, stdio
        return caller

    def adopt(self) -> None:
        """In a worker: take the caller's environment (the launcher's own variables kept)
        and its stdout/stderr."""
        ours = {k: v for k, v in os.environ.items()
                if _ENV_AT_IMPORT.get(k) != v or k in _LAUNCHER_KEYS
                or k.startswith("TORCHELASTIC_")}
        os.environ.clear()
        os.environ.update({**self.env, **ours})
        if self.stdio is None:
            return
        for stream, fd, dup in ((sys.stdout, 1, self.stdio[0]), (sys.stderr, 2, self.stdio[1])):
            if dup is None:  # closed here: keep the server's
                continue
            if stream is not None:
                stream.flush()
            new = dup.detach()
            if new != fd:
                os.dup2(new, fd)
                os.close(new)


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


#: Signals torch's elastic agent takes over while it runs the workers (its
#: TORCHELASTIC_SIGNALS_TO_HANDLE default) and leaves set after it returns.
_AGENT_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")


@contextlib.contextmanager
def _user_signal_handlers():
    """Give this process its own signal handlers back after the launch, and Ctrl-C during
    it back as KeyboardInterrupt.

    torch's agent installs a handler that raises SignalException for SIGINT/SIGTERM/...
    and never removes it: Ctrl-C after fit would raise SignalException instead of
    KeyboardInterrupt. The agent stops the workers before it re-raises; a SIGINT then
    reaches the caller as KeyboardInterrupt, as a Ctrl-C anywhere else in a script would.
    """
    import signal
    import threading
    from torch.distributed.elastic.multiprocessing.api import SignalException
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set (and so were only changed) in the main thread
        return
    signals = [getattr(signal, n) for n in _AGENT_SIGNALS if hasattr(signal, n)]
    saved = {s: signal.getsignal(s) for s in signals}
    try:
        yield
    except SignalException as e:
        if e.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise
    finally:
        for s, handler in saved.items():
            if handler is not None:  # None: set outside Python; leave as it is
                signal.signal(s, handler)


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


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, and modules that torch.nn.utils.parametrize has parametrized
    (parametrizations.weight_norm, spectral_norm, orthogonal, a user's own): torch refuses to
    pickle those ("only supported through state_dict()"), as their class is made on the fly
    and its __getstate__ raises. Such a module travels as its own class, its state (the
    parametrizations, their original tensors and buffers included) and the names of its
    parametrized tensors; the rank parametrizes it again as torch's
    register_parametrization would, without recomputing the originals (`_parametrized`)."""

    def reducer_override(self, obj):
        if isinstance(obj, np.memmap):  # travels as its file, not its bytes (data.memmaps)
            ref = memmap_reference(obj)
            if ref is not None:
                return open_memmap, ref
        if isinstance(obj, torch.nn.Module) and _parametrize.is_parametrized(obj) and \
                type(obj).__module__ == _parametrize.__name__:  # torch's class, made on the fly
            names = tuple(obj.parametrizations.keys())
            return _parametrized, (type(obj).__bases__[0], names), dict(vars(obj))
        return super().reducer_override(obj)


def _parametrized(base: type, names: tuple[str, ...]) -> torch.nn.Module:
    """An empty `base` module with torch's parametrized class and a property per name in
    `names`; unpickling then gives it the sender's state."""
    module = base.__new__(base)
    _parametrize._inject_new_class(module)
    for name in names:
        _parametrize._inject_property(module, name)
    return module


def _worker(payload_path: str, timeout_s: float | None, caller: _Caller | None = None):
    """Entry point of every launched rank: join the group, train, return rank 0's result."""
    import torch.distributed as dist

    if caller is not None:
        caller.adopt()
    # a launcher killed with SIGKILL cannot stop its ranks: each ends with it instead
    follow_multiprocessing_parent()
    from bigtrain.launch.join import join_existing_job
    with open(payload_path, "rb") as f:
        run_fn, task, strategy, owner, kind = cloudpickle.load(f)  # our own file, just written
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one host: gloo listens on loopback only
    env = join_existing_job(timeout_s, kind=kind)
    try:
        result = run_fn(task, strategy, owner, env)
    except Exception as e:
        if any(mark in str(e) for mark in _FOLLOW_ON):
            # another rank failed and closed its connections: let it exit first, so the
            # agent records its error as the job's, not this rank's echo of it
            time.sleep(FOLLOW_ON_DELAY_S)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if env.rank != 0:
        return None
    # numpy arrays cross the process boundary as plain bytes (no shared-memory handles)
    result.state_dict = {k: v.numpy() for k, v in (result.state_dict or {}).items()}
    result.callback_states = callback_states(getattr(task, "callbacks", []))
    return result


_PLAIN = (int, float, str, bool, type(None), np.generic, np.ndarray)


def callback_states(callbacks) -> list[dict]:
    """Each callback's attributes made of plain values (numbers, strings, arrays and lists or
    dicts of them: EarlyStopping's best and stopped_epoch, a user's counters), which the
    caller copies into its own callback objects after a launched fit, as if they had run in
    its process. The model, open files and writers stay behind."""
    def plain(v) -> bool:
        if isinstance(v, (list, tuple)):
            return all(plain(x) for x in v)
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        return isinstance(v, _PLAIN)
    return [{k: v for k, v in vars(cb).items() if k not in ("model", "params") and plain(v)}
            for cb in callbacks]


def launch(task, strategy, nprocs: int, *, model_owner, run_fn=None, max_restarts: int = 0,
           timeout: float | None = None, start_method: str | None = None,
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
        start_method: how the workers start, "forkserver" or "spawn" (None:
            `default_start_method()`).
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
            _Pickler(f).dump((run_fn, task, strategy, model_owner, device_kind))
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nprocs,
                              run_id=f"bigtrain-{uuid.uuid4().hex[:8]}",
                              rdzv_backend=register_rendezvous(),  # listens on loopback only
                              rdzv_endpoint="127.0.0.1:0", max_restarts=max_restarts,
                              monitor_interval=0.1,
                              start_method=start_method or default_start_method(),
                              local_addr="127.0.0.1")
        try:
            with _main_module_hidden(), _user_signal_handlers():
                results = elastic_launch(config, _worker)(payload, timeout, _Caller())
        except ChildFailedError as e:
            raise RuntimeError(_root_cause(e)) from None
        finally:
            # the rendezvous stores sit in reference cycles, and their server threads run
            # until collected: a process the caller forks later (DataLoader workers) would
            # inherit them and abort when it exits ("std::system_error: Invalid argument")
            gc.collect()
    result = results[0]
    result.state_dict = {k: torch.from_numpy(v) for k, v in result.state_dict.items()}
    return result


def _root_cause(err) -> str:
    """The failure to show of a ChildFailedError: a rank's own error before the follow-on
    errors of the ranks that lost it (torch picks the earliest by the second, and a rank
    that saw its peer close the connection often fails in the same second)."""
    def message(failure) -> str:
        m = failure.message
        return str(m.get("message", m) if isinstance(m, dict) else m)
    rank, failure = min(err.failures.items(), key=lambda rf: (
        any(mark in message(rf[1]) for mark in _FOLLOW_ON), rf[1].timestamp, rf[0]))
    text = message(failure)
    others = sorted(r for r in err.failures if r != rank)
    also = f"\n(ranks {others} failed too)" if others else ""
    hint = "" if "bigtrain:" in text else next(  # a torch error, not one of ours
        (h for marker, h in _HINTS if marker in text), "")
    return (f"distributed fit failed on rank {rank} (exit code {failure.exitcode}):\n{text}"
            f"{hint}{also}")


FOLLOW_ON_DELAY_S = 2.0  # how long a rank that lost a peer waits before failing itself

#: what a rank says when another rank failed first (gloo/NCCL lost the peer, a parameter
#: server or watchdog gave up on it)
_FOLLOW_ON = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
              "stopped responding", "NCCL communicator was aborted", "Socket Timeout",
              "To enable traceback see")


#: torch errors whose fix is a bigtrain argument: (text in the error, what to do)
_HINTS = [
    ("find_unused_parameters", "\nbigtrain: some parameters got no gradient in a step (a layer "
     "the forward skipped, or used only on some batches or some ranks). Train with "
     "strategy=DataParallel(find_unused_parameters=True) (from bigtrain.parallel; in place of "
     "'zero1': Zero1(find_unused_parameters=True)), or remove the unused layers."),
]
