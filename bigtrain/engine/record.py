"""Fill the run record (`bigtrain.diagnose.RunRecord`) at the end of a fit and write it to
the run directory, so `bigtrain report` and `bigtrain doctor` can read any strategy's run.

Per-rank figures are gathered with one all-reduce of a small tensor: local bytes of
parameters, gradients and optimizer state (DTensor shards count as their local part), the
first step's saved-activation peak and gradient bytes (bigtrain.diagnose.step_memory), the
resident set size, a matmul peak FLOP/s timed by every rank at once, each rank's mean
seconds per step phase (bigtrain.diagnose.step_timer) and its measured pipeline bubble.
The record's step time is the mean over the ranks that trained.
"""
from __future__ import annotations

import os
import sys

import torch

from bigtrain.diagnose.record import RankMemory, RunRecord, StepTimes
from bigtrain.diagnose.step_memory import local_bytes as _local_bytes
from bigtrain.diagnose.step_memory import process_rss
from bigtrain.diagnose.step_timer import gather_step_samples
from bigtrain.engine.checkpoint_state import inner_optimizer
from bigtrain.engine.run_profile import data_profile, doctor_fields

#: seconds of matmuls each rank times for the run's peak FLOP/s
PEAK_PROBE_S = 0.3


def local_state_bytes(module, optimizer) -> tuple[int, int, int]:
    """(parameter, gradient, optimizer-state) bytes this rank holds now. Between steps the
    gradients are gone (`zero_grad(set_to_none=True)`): see `step_grad_bytes`."""
    params = sum(_local_bytes(p) for p in module.parameters())
    grads = sum(_local_bytes(p.grad) for p in module.parameters() if p.grad is not None)
    opt = 0
    # zero1: ZeroRedundancyOptimizer keeps this rank's shard of the state in its local optimizer
    for state in getattr(inner_optimizer(optimizer), "state", {}).values():
        opt += sum(_local_bytes(v) for v in state.values() if torch.is_tensor(v))
    return params, grads, opt


def step_grad_bytes(module, memory) -> tuple[int, str]:
    """Gradient bytes this rank held during a step, and how they were got: read at the
    first optimizer step (`memory`, a StepMemory), else the local size of the gradients of
    its trainable parameters (a gradient has its parameter's shape and dtype)."""
    if memory is not None and memory.grads is not None:
        return memory.grads, "measured"
    return sum(_local_bytes(p) for p in module.parameters() if p.requires_grad), "sized"


def _optimizer_fused(optimizer) -> bool | None:
    """Whether the fused kernel ran; None where it cannot run (sharded DTensor parameters,
    see bigtrain.api.optimizer_kernels), so the doctor does not advise fused=True there."""
    from torch.distributed.tensor import DTensor
    groups = getattr(inner_optimizer(optimizer), "param_groups", [])
    if any(isinstance(p, DTensor) for g in groups for p in g["params"]):
        return None
    return bool(getattr(optimizer, "defaults", {}).get("fused"))


_PHASE_COLS = ("data", "forward", "backward", "optimizer", "comm", "other")
_MEM_COLS = ("params", "grads", "optimizer", "activations_peak", "rss", "peak_flops")


def rank_memory_figures(module, optimizer, memory) -> list[float]:
    """This rank's `_MEM_COLS` (-1: not measured): state bytes, the first step's gradient
    and saved-activation bytes (`memory`, a StepMemory, or None), its resident set size and
    its matmul peak FLOP/s (CPU ranks: every rank times it at the same moment)."""
    from bigtrain.plan.device import measure_peak_flops
    params, _, opt = local_state_bytes(module, optimizer)
    grads, _ = step_grad_bytes(module, memory)
    act = None if memory is None else memory.activations_peak
    cpu = all(p.device.type == "cpu" for p in module.parameters())
    peak = measure_peak_flops(PEAK_PROBE_S) if cpu else None
    rss = process_rss()
    return [params, grads, opt, *(-1.0 if v is None else float(v) for v in (act, rss, peak))]


def _rank_memory(row) -> RankMemory:
    act, rss = (int(v) if v >= 0 else None for v in row[3:5].tolist())
    return RankMemory(params=int(row[0]), grads=int(row[1]), optimizer=int(row[2]),
                      activations_peak=act, rss=rss)


def gather_rank_figures(strategy, module, optimizer, phases: dict[str, float],
                        bubble: float | None, memory=None) -> dict:
    """Every rank's memory, step phases and pipeline bubble, on every rank (one all-reduce
    of a world x 15 table; ranks that did not train, such as parameter servers, send zeros).

    Returns:
        {"memory": {rank: RankMemory}, "phases": rank-mean seconds per phase,
         "rank_phases": [per-rank phase dicts], "bubble": mean of the ranks that measured
         one (or None), "peak_flops": the fastest rank's matmul FLOP/s (or None)}.
    """
    env = strategy.env
    m, k = len(_MEM_COLS), len(_PHASE_COLS)
    table = torch.zeros(env.world_size, m + k + 3, dtype=torch.float64)
    strategy.all_reduce(table.sum(0, keepdim=True))  # start the peak probes together
    table[env.rank] = torch.tensor(
        [*rank_memory_figures(module, optimizer, memory), *(phases[p] for p in _PHASE_COLS),
         bubble or 0.0, 0.0 if bubble is None else 1.0, 1.0], dtype=torch.float64)
    strategy.all_reduce(table)
    memory = {r: _rank_memory(row) for r, row in enumerate(table)}
    trained = table[:, -1] > 0
    rank_phases = [dict(zip(_PHASE_COLS, row[m:m + k].tolist())) for row in table[trained]]
    mean = table[trained, m:m + k].mean(0).tolist() if trained.any() else [0.0] * k
    n_bubble = float(table[:, -2].sum())
    peak = float(table[:, m - 1].max())
    return {"memory": memory, "phases": dict(zip(_PHASE_COLS, mean)),
            "rank_phases": rank_phases, "peak_flops": peak if peak > 0 else None,
            "bubble": float(table[:, -3].sum()) / n_bubble if n_bubble else None}


def step_phases(timing) -> tuple[dict[str, float], float | None]:
    """This rank's mean seconds per step in each phase, and the wait for in-backward
    gradient sync (None: nothing probed), which is moved from backward to communication:
    what the run's backward took beyond its compute (the probe's unsynced backward per
    micro-batch, times the micro-batches of a step)."""
    phases = timing.timer.means()
    if timing.backward_compute_s is None:
        return phases, None
    compute = timing.backward_compute_s * timing.micro_per_step
    waited = min(max(phases["backward"] - compute, 0.0), phases["backward"])
    phases["backward"] -= waited
    phases["comm"] += waited
    return phases, waited


def _bubble(strategy) -> float | None:
    value = strategy.stats().get("pipeline_bubble")
    return None if value is None else min(max(float(value), 0.0), 1.0)


def model_flops_utilisation(task, samples_per_s: float | None, world_size: int,
                            local_world_size: int, rank_peak: float | None = None
                            ) -> tuple[float | None, float | None]:
    """(MFU, peak FLOP/s of the job): 3 x forward FLOPs per sample x samples/s, over
    world_size x one rank's peak. The forward FLOPs are counted on one sample on the meta
    device, at the model's full shapes whatever the strategy (bigtrain.engine.model_flops).
    `rank_peak` is one rank's measured peak (write_run_record: the fastest rank's, all
    timed at once); without it rank 0 times a short matmul with its own threads, its
    share of the host's cores (bigtrain.plan.device.rank_peak_flops). None where it cannot
    be measured (a GPU without a known peak)."""
    from bigtrain.engine.model_flops import forward_flops_per_sample
    from bigtrain.plan import profile_module
    from bigtrain.plan.device import measure_matmul_flops, rank_peak_flops
    if not samples_per_s or next(task.module.parameters()).device.type != "cpu":
        return None, None
    try:
        x, _, _ = task.train.take(torch.arange(1), torch.device("cpu"))
        if any(hasattr(p, "to_local") for p in task.module.parameters()):
            flops = forward_flops_per_sample(task.module, x)  # sharded: never run it alone
        else:
            flops = profile_module(task.module, example_input=x).forward_flops_per_sample
        peak = rank_peak or rank_peak_flops(measure_matmul_flops(), torch.get_num_threads(),
                                            local_world_size, os.cpu_count())
    except Exception:  # noqa: BLE001 - a figure we cannot measure is left out, not guessed
        return None, None
    if not flops or not peak:
        return None, None
    job_peak = peak * world_size
    return 3.0 * flops * samples_per_s / job_peak, job_peak


def tokens_per_sample(task) -> int | None:
    """Token ids per sample when the (first) input holds integer ids of shape (n, T, ...),
    as a language model's does; None for feature inputs."""
    try:
        x, _, _ = task.train.take(torch.arange(1), torch.device("cpu"))
    except Exception:  # noqa: BLE001 - a figure we cannot read is left out, not guessed
        return None
    first = x[0] if isinstance(x, (tuple, list)) else x
    if not torch.is_tensor(first) or first.is_floating_point() or first.dim() < 2:
        return None
    return first[0].numel()


def _finished_epochs(result) -> dict:
    """The History without a NaN-stopped last epoch (which the History keeps, as Keras's):
    the record's history holds finished epochs; its stop and step losses tell the rest."""
    if result.stop_reason != "nan_loss":
        return dict(result.history)
    return {k: v[:-1] for k, v in result.history.items() if len(v) > 1}


def write_run_record(task, strategy, module, optimizer, result, timing,
                     monitor=None) -> None:
    """Gather per-rank figures (collective) and, on rank 0, write `run.json` into
    `task.run_dir` (every rank calls it, or none: the fit has a run_dir on every rank).

    Args:
        timing: the loop's RunTiming (phase timer, steps, probed in-backward sync wait).
        monitor: rank 0's RunMonitor (stop reason, step losses, gradient health); with
            it the record also gets the data profile (bigtrain.engine.run_profile).
    """
    phases, sync_wait = step_phases(timing)
    step_memory = timing.timer.memory if timing.timer is not None else None
    figures = gather_rank_figures(strategy, module, optimizer, phases,
                                  _bubble(strategy), step_memory)
    samples = gather_step_samples(timing.timer, strategy.all_reduce, strategy.env.rank,
                                  strategy.env.world_size)
    if not strategy.env.is_main:
        return
    mfu, peak = model_flops_utilisation(task, result.stats.get("samples_per_s"),
                                        strategy.env.world_size, strategy.env.local_world_size,
                                        figures["peak_flops"])
    ph = figures["phases"]
    stats = strategy.stats()
    doctor = doctor_fields(monitor, data_profile(task, strategy) if monitor else None)
    if monitor is not None and doctor["stop"]["reason"] == "running":
        doctor["stop"] = {**doctor["stop"], "reason": "completed"}
    samples_per_s, tokens = result.stats.get("samples_per_s"), tokens_per_sample(task)
    record = RunRecord(
        strategy=strategy.describe(), world_size=strategy.env.world_size,
        threads_per_rank=torch.get_num_threads(), optimizer=task.optimizer_name,
        precision=task.config.precision, batch_size=task.config.batch_size,
        epochs=len(result.epochs), optimizer_fused=_optimizer_fused(optimizer),
        local_world_size=strategy.env.local_world_size, cpu_cores=os.cpu_count(),
        device=str(strategy.env.device),
        microbatches=stats.get("pipeline_microbatches", task.config.accumulate_steps),
        pipeline_stages=stats.get("pipeline_stages"),
        num_params=sum(p.numel() for p in task.module.parameters()),
        **doctor,
        samples_per_s=samples_per_s, mfu=mfu, peak_flops=peak,
        tokens_per_s=samples_per_s * tokens if samples_per_s and tokens else None,
        step_time=StepTimes(data=ph["data"], forward=ph["forward"], backward=ph["backward"],
                            optimizer=ph["optimizer"], comm_exposed=ph["comm"],
                            other=ph["other"]),
        pipeline_bubble=figures["bubble"], memory=figures["memory"],
        rank_step_times=[r["data"] + r["forward"] + r["backward"] + r["optimizer"]
                         for r in figures["rank_phases"]],
        rank_step_samples=samples,
        history=_finished_epochs(result), script=_script(), script_args=list(sys.argv[1:]),
        extra={"timed_steps": timing.timer.timed_steps,
               **({} if sync_wait is None else
                  {"probed_sync_wait_s": sync_wait}),  # rank 0's
               "step_time_note": timing_note(strategy, timing),
               "memory_note": memory_note(step_memory, module),
               **({"peak_flops_note": PEAK_NOTE} if peak else {}),
               **_bf16_extra(task, strategy),
               **{k: stats[k] for k in ("pipeline_bubble_theory",) if k in stats}})
    record.save(task.run_dir)


def _bf16_extra(task, strategy) -> dict:
    """{"bf16_probe": ...} when the run trained in bf16 on a CPU (the doctor's slow_bf16)."""
    from bigtrain.plan.bf16 import bf16_record
    probe = bf16_record(task.config.precision, strategy.env.device.type)
    return {} if probe is None else {"bf16_probe": probe}


def timing_note(strategy, timing) -> str:
    """How this run's step phases were measured and what they leave out, in words."""
    timer = timing.timer
    every, exact = timer.sample_every, timer.exact_steps
    if every == 1 or timing.steps <= exact:
        how = "every step"
    else:
        how = (f"the first {exact} steps, then about one in {every}" if exact else
               f"about one step in {every}") + ", each counted as the steps it stands for" + \
            (", the device synchronised" if timer.synchronises else "")
    if timer.timed_steps > 1:
        how += " (the first timed step left out), averaged over ranks"
    probe = ("; backward's wait for its in-backward gradient sync (the run's backward minus "
             "its compute, probed at the end of the fit as the median backward without the "
             "sync) was moved to comm_exposed" if timing.backward_compute_s is not None else "")
    return f"timed at the strategy's phase marks, {how}{probe}; {strategy.timing_note}"


PEAK_NOTE = (f"each rank timed n=512 fp32 matmuls with its own threads for about "
             f"{PEAK_PROBE_S:g} s at the end of the fit, all ranks at once (warm-up, then "
             "the fastest of many ~1 ms groups); the job's peak is the fastest rank's figure "
             "times the ranks")


def memory_note(memory, module) -> str:
    """How the record's per-rank memory was measured, in words."""
    _, how = step_grad_bytes(module, memory)
    grads = ("gradients: read at the first optimizer step, before zero_grad drops them"
             if how == "measured" else
             "gradients: the local size of the trainable parameters' gradients (no optimizer "
             "step was seen on rank 0)")
    return (f"{grads}; activations_peak: the most bytes autograd held saved for backward "
            "during the first step (parameters left out, local parts of DTensors); rss: the "
            "process's resident set at the end of the fit; params and optimizer: held at "
            "the end of the fit (local shards)")


def _script() -> str | None:
    """The training script this process runs (absolute), when it was started as a .py file
    (`python train.py`, `bigtrain train/run train.py`); None for `python -m ...` (a test
    runner, a notebook kernel) and interactive sessions."""
    path = sys.argv[0] if sys.argv else ""
    main = sys.modules.get("__main__")
    if getattr(main, "__spec__", None) is not None or not path.endswith(".py"):
        return None
    return os.path.abspath(path) if os.path.isfile(path) else None
