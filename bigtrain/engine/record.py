"""Fill the run record (`bigtrain.diagnose.RunRecord`) at the end of a fit and write it to
the run directory, so `bigtrain report` and `bigtrain doctor` can read any strategy's run.

Per-rank figures are gathered with one all-reduce of a small tensor: local bytes of
parameters, gradients and optimizer state (DTensor shards count as their local part) and
each rank's mean step time (for straggler detection).
"""
from __future__ import annotations

import os

import torch

from bigtrain.diagnose.record import RankMemory, RunRecord, StepTimes


def _local_bytes(t) -> int:
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()


def local_state_bytes(module, optimizer) -> tuple[int, int, int]:
    """(parameter, gradient, optimizer-state) bytes this rank holds."""
    params = sum(_local_bytes(p) for p in module.parameters())
    grads = sum(_local_bytes(p.grad) for p in module.parameters() if p.grad is not None)
    opt = 0
    for state in getattr(optimizer, "state", {}).values():
        opt += sum(_local_bytes(v) for v in state.values() if torch.is_tensor(v))
    return params, grads, opt


def gather_rank_figures(strategy, module, optimizer, step_s: float) -> tuple[dict, list]:
    """Every rank's memory and mean step time, on every rank (one all-reduce)."""
    env = strategy.env
    table = torch.zeros(env.world_size, 4, dtype=torch.float64)
    table[env.rank] = torch.tensor([*local_state_bytes(module, optimizer), step_s],
                                   dtype=torch.float64)
    strategy.all_reduce(table)
    memory = {r: RankMemory(params=int(row[0]), grads=int(row[1]), optimizer=int(row[2]))
              for r, row in enumerate(table)}
    return memory, [float(row[3]) for row in table]


def model_flops_utilisation(task, samples_per_s: float | None, world_size: int,
                            local_world_size: int) -> tuple[float | None, float | None]:
    """(MFU, peak FLOP/s per rank): 3 x forward FLOPs per sample (counted on one sample on
    the meta device) x samples/s, over the measured matmul peak of this host's ranks.
    None where it cannot be measured (sharded parameters, a GPU without a known peak)."""
    from bigtrain.plan import measure_cpu_device, profile_module
    if not samples_per_s or any(hasattr(p, "to_local") for p in task.module.parameters()):
        return None, None
    if next(task.module.parameters()).device.type != "cpu":
        return None, None
    try:
        x, _, _ = task.train.take(torch.arange(1), torch.device("cpu"))
        flops = profile_module(task.module, example_input=x).forward_flops_per_sample
        peak = measure_cpu_device(ranks_per_host=local_world_size).flops
    except Exception:  # noqa: BLE001 - a figure we cannot measure is left out, not guessed
        return None, None
    if not flops or not peak:
        return None, None
    return 3.0 * flops * samples_per_s / (peak * world_size), peak


def write_run_record(task, strategy, module, optimizer, result, timing: dict) -> None:
    """Gather per-rank figures (collective) and, on rank 0, write `run.json`."""
    steps = max(1, timing["steps"])
    memory, rank_steps = gather_rank_figures(strategy, module, optimizer,
                                             timing["compute_s"] / steps)
    if not strategy.env.is_main or task.run_dir is None:
        return
    mfu, peak = model_flops_utilisation(task, result.stats.get("samples_per_s"),
                                        strategy.env.world_size, strategy.env.local_world_size)
    record = RunRecord(
        strategy=strategy.describe(), world_size=strategy.env.world_size,
        threads_per_rank=torch.get_num_threads(), optimizer=task.optimizer_name,
        precision=task.config.precision, batch_size=task.config.batch_size,
        epochs=len(result.epochs), optimizer_fused=bool(getattr(optimizer, "defaults", {})
                                                         .get("fused")),
        local_world_size=strategy.env.local_world_size, cpu_cores=os.cpu_count(),
        device=str(strategy.env.device), microbatches=task.config.accumulate_steps,
        num_params=sum(p.numel() for p in task.module.parameters()),
        samples_per_s=result.stats.get("samples_per_s"), mfu=mfu, peak_flops=peak,
        step_time=StepTimes(data=timing["data_s"] / steps),
        memory=memory, rank_step_times=rank_steps, history=dict(result.history),
        extra={"compute_s_per_step": timing["compute_s"] / steps,
               "step_time_note": "data = batch gathering; compute = forward+backward+optimizer "
                                 "(not split further); exposed communication not measured"})
    record.save(task.run_dir)
