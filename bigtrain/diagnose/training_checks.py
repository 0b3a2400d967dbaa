"""Why a run is slow: findings from the step-time breakdown and per-rank figures of a RunRecord.

Example:
    from bigtrain.diagnose import RunRecord, check_run
    for f in check_run(RunRecord.load("runs/mnist")):
        print(f.kind, f.evidence, "->", f.advice)
"""
from __future__ import annotations

import math
import re
import statistics
from dataclasses import replace

from bigtrain.diagnose.baseline_checks import check_profile
from bigtrain.diagnose.findings import Finding, sort_findings
from bigtrain.diagnose.grad_health import check_gradients
from bigtrain.diagnose.lr_checks import check_lr, reconcile
from bigtrain.diagnose.quality_checks import check_history
from bigtrain.diagnose.record import RunRecord
from bigtrain.diagnose.start_checks import check_start, reconcile_start

INPUT_BOUND_SHARE = 0.30   # data-wait share of the step that makes a run input-bound
#: and at least this wait per step (seconds): under it the wait is the batch's own indexing
#: and copy (in-memory arrays take ~0.1 ms), which background workers cannot hide - handing
#: a batch over from a worker process costs about as much
INPUT_BOUND_MIN_S = 1e-3
COMM_BOUND_SHARE = 0.30    # exposed-communication share that makes it communication-bound
LOW_MFU = 0.20             # below this MFU a small batch is the first suspect
SMALL_BATCH = 32           # fewer samples per rank (per micro-batch) are small
#: fewer still are tiny: each step's fixed cost (launches, Python, the optimizer's loop over
#: tensors) dwarfs its arithmetic whatever the model, so a bigger batch surely pays
TINY_BATCH = 8
#: a batch from TINY_BATCH to SMALL_BATCH is the suspect only when the model is big enough
#: for the batch to matter: 4x the batch can at most raise MFU 4x (the step cannot get
#: faster), so an MFU below this stays far under LOW_MFU at any batch size; it is the model
#: that is too small to keep the cores busy, and its batch is the user's choice to make
BATCH_BOUND_MFU = LOW_MFU / 8
OPTIMIZER_SHARE = 0.10     # optimizer share worth fusing
HIGH_BUBBLE = 0.25         # pipeline idle fraction worth more micro-batches
TARGET_BUBBLE = 0.10       # what the suggested micro-batch count aims for
STRAGGLER_RATIO = 1.20     # slowest rank / median rank step time
STRAGGLER_SHARE = 0.10     # and the others' wait for it is this share of the step at least
STRAGGLER_STEPS = 0.80     # and it was the slower in this share of the sampled steps
MIN_STEP_SAMPLES = 5       # sampled steps that can show it (5 of 5: 1 in 32 by chance)
UNSAMPLED_RATIO = 2.0      # a record without per-step samples: only this gap is evidence
FUSABLE = {"adam", "adamw", "sgd", "adagrad"}  # torch optimizers with fused CPU kernels
BROKEN_IMPACT = 0.5        # a quality finding explaining this much: the model is broken


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def _input_bound(r: RunRecord) -> list[Finding]:
    st = r.step_time
    if st.share("data") < INPUT_BOUND_SHARE or st.data < INPUT_BOUND_MIN_S:
        return []
    return [Finding("input_bound", "warning",
                    f"waiting for data is {st.share('data'):.0%} of each {_ms(st.total)} step "
                    f"({_ms(st.data)})",
                    _background_loading(), st.share("data"))]


def _background_loading() -> str:
    """Advice for an input-bound run: fit's own background loading (workers=, prefetch=)."""
    return ("load batches in the background: model.fit(dataset, ..., workers=2, prefetch=2) "
            "(a DataLoader's num_workers is honoured too), or keep the data in memory as arrays")


def _comm_bound(r: RunRecord) -> list[Finding]:
    st = r.step_time
    # waiting in a collective for a slow rank is the straggler's cost, not the network's
    times = r.rank_step_times  # the ranks' mean wait for the slowest: max - mean
    wait = (max(times) - statistics.fmean(times)) if len(times) >= 2 else 0.0
    share = max(st.comm_exposed - wait, 0.0) / st.total if st.total > 0 else 0.0
    if r.world_size < 2 or share < COMM_BOUND_SHARE:
        return []
    return [Finding("comm_bound", "warning",
                    f"exposed communication is {share:.0%} of each "
                    f"{_ms(st.total)} step on {r.world_size} ranks ({r.strategy})",
                    _comm_advice(r), share)]


def _comm_advice(r: RunRecord) -> str:
    bucket = re.search(r"bucket ([0-9.]+) MB", r.strategy)
    if bucket and float(bucket.group(1)) < 1:
        return ("all-reduce gradients in larger buckets: strategy=DataParallel(bucket_cap_mb=25) "
                "(one all-reduce per 25 MB instead of one per tensor)")
    return (f"communicate less often per sample: raise batch_size from {r.batch_size} to "
            f"{4 * r.batch_size} (or accumulate_steps=4), or use fewer ranks with more "
            "threads each")


def _replicas(r: RunRecord) -> int:
    """Data-parallel replicas of the run: the ranks of one pipeline or tensor-parallel group
    all compute on the same samples, so only the replicas split the batch. The record names
    a pipeline by its stages (pipeline_stages), tensor parallelism and hybrids by
    Strategy.describe() ("degree=2", "dp=auto, tp=2, pp=1; ...")."""
    hybrid = re.match(r"dp=(\w+), tp=(\d+), pp=(\d+)", r.strategy)
    if hybrid:
        dp, tp, pp = hybrid.groups()
        return int(dp) if dp.isdigit() else max(r.world_size // (int(tp) * int(pp)), 1)
    tensor = re.match(r"degree=(\d+|world)", r.strategy)
    if tensor:
        return 1 if tensor.group(1) == "world" else max(r.world_size // int(tensor.group(1)), 1)
    if r.pipeline_stages:
        return max(r.world_size // r.pipeline_stages, 1)
    return r.world_size


def _per_rank_batch(r: RunRecord) -> float:
    """Samples in one micro-batch of one rank's forward."""
    return r.batch_size / _replicas(r) / r.microbatches


def _low_mfu(r: RunRecord) -> list[Finding]:
    if r.mfu is None or r.mfu >= LOW_MFU or _per_rank_batch(r) >= SMALL_BATCH:
        return []
    if _per_rank_batch(r) >= TINY_BATCH and r.mfu < BATCH_BOUND_MFU:
        return []  # a tiny model: no batch size would keep the cores busy
    peak = f" of {r.peak_flops:.3g} FLOP/s peak" if r.peak_flops else ""
    return [Finding("small_batch", "warning",
                    f"MFU is {r.mfu:.1%}{peak} with {_per_rank_batch(r):.0f} samples per rank "
                    "per micro-batch: the matrix multiplies are too small to keep cores busy",
                    _bigger_batches(r), 1.0 - r.mfu / LOW_MFU)]


def _bigger_batches(r: RunRecord) -> str:
    if r.pipeline_stages:  # fewer micro-batches would grow the bubble (p-1)/(m+p-1)
        return (f"fit(..., batch_size={r.batch_size * 4}) (scale the learning rate with it) "
                f"and keep microbatches={r.microbatches}: each micro-batch grows to "
                f"{4 * _per_rank_batch(r):.0f} samples")
    return (f"fit(..., batch_size={r.batch_size * 4}) (scale the learning rate with it), or "
            "accumulate fewer, larger micro-batches")


def _oversubscribed(r: RunRecord) -> list[Finding]:
    used = r.threads_per_rank * r.local_world_size
    if r.cpu_cores is None or used <= r.cpu_cores:
        return []
    fair = max(r.cpu_cores // r.local_world_size, 1)
    return [Finding("thread_oversubscription", "warning",
                    f"{r.local_world_size} ranks x {r.threads_per_rank} threads = {used} "
                    f"threads on {r.cpu_cores} cores",
                    f"torch.set_num_threads({fair}) in each rank (or OMP_NUM_THREADS={fair}) "
                    "so threads stop evicting each other",
                    1.0 - r.cpu_cores / used)]


def _unfused(r: RunRecord) -> list[Finding]:
    share = r.step_time.share("optimizer")
    if (r.device != "cpu" or r.optimizer_fused is not False
            or r.optimizer.lower() not in FUSABLE or share < OPTIMIZER_SHARE):
        return []
    return [Finding("unfused_optimizer", "warning",
                    f"the unfused {r.optimizer} step is {share:.0%} of each step "
                    f"({_ms(r.step_time.optimizer)})",
                    f"let bigtrain fuse it: compile(optimizer={r.optimizer.capitalize()}(...)) "
                    "or OptimizerSpec(..., {..., 'fused': True}) (one kernel for all "
                    "parameters on CPU)", 0.7 * share)]


def suggested_microbatches(stages: int, target: float = TARGET_BUBBLE) -> int:
    """Smallest m with (p-1)/(m+p-1) <= target."""
    return max(1, math.ceil((stages - 1) * (1.0 - target) / target))


def _bubble(r: RunRecord) -> list[Finding]:
    if r.pipeline_bubble is None or r.pipeline_bubble < HIGH_BUBBLE:
        return []
    p, m_now = r.pipeline_stages or r.world_size, r.microbatches
    m = suggested_microbatches(p)
    evidence = (f"the pipeline idles {r.pipeline_bubble:.0%} of each step with {p} stages "
                f"and {m_now} micro-batches")
    if m_now < m:  # more micro-batches shrink the schedule's bubble (p-1)/(m+p-1)
        return [Finding("pipeline_bubble", "warning", evidence,
                        f"strategy=Pipeline(stages={p}, microbatches={m}) instead of "
                        f"{m_now} micro-batches (bubble (p-1)/(m+p-1) falls from "
                        f"{(p - 1) / (m_now + p - 1):.0%} to {(p - 1) / (m + p - 1):.0%}); "
                        f"keep batch_size >= {m} per replica", r.pipeline_bubble)]
    # enough micro-batches already: the idle time is not the schedule's fill and drain
    theory = (p - 1) / (m_now + p - 1)
    slow = _slow_stage(r)
    advice = (_rebalance_advice(r, slow) if slow is not None else
              f"make each micro-batch bigger: raise batch_size from {r.batch_size} to "
              f"{2 * r.batch_size} ({_per_rank_batch(r):.0f} samples per micro-batch now; "
              "each one pays the send/recv latency between stages), or "
              "strategy=Pipeline(..., schedule='interleaved')")
    return [Finding("pipeline_bubble", "warning",
                    f"{evidence}, far above the schedule's own (p-1)/(m+p-1) = {theory:.0%}"
                    + (f": stage {slow} is the slowest and the others wait for it"
                       if slow is not None else ""), advice, r.pipeline_bubble)]


def _slowest(r: RunRecord) -> tuple[int, float] | None:
    """(slowest rank, the other ranks' median seconds per step) when that rank's own work
    takes STRAGGLER_RATIO x the median or more; None otherwise."""
    times = r.rank_step_times
    if len(times) < 2:
        return None
    slow = max(range(len(times)), key=times.__getitem__)
    median = statistics.median(times[:slow] + times[slow + 1:])  # of the other ranks
    return (slow, median) if median > 0 and times[slow] / median >= STRAGGLER_RATIO else None


def _slow_stage(r: RunRecord) -> int | None:
    """The slowest pipeline stage, when each rank is one stage and one is much slower."""
    found = _slowest(r)
    return found[0] if found and r.pipeline_stages == len(r.rank_step_times) else None


def _rebalance_advice(r: RunRecord, slow: int) -> str:
    """Move layers off a slow pipeline stage: each stage's layer count is in the split."""
    split = re.search(r"split=\[([0-9, ]+)\]", r.strategy)
    counts = [int(c) for c in split.group(1).split(",")] if split else []
    if len(counts) == len(r.rank_step_times) and counts[slow] > 1:
        to = slow + 1 if slow + 1 < len(counts) and (slow == 0 or r.rank_step_times[slow + 1]
                                                     <= r.rank_step_times[slow - 1]) else slow - 1
        new = list(counts)
        new[slow], new[to] = new[slow] - 1, new[to] + 1
        return (f"rebalance the stages: move a layer from stage {slow} to stage {to}, "
                f"Pipeline(..., split={new}) instead of split={counts}; or leave split out "
                "so bigtrain balances the stages by measured layer time")
    return (f"rebalance the stages: give stage {slow} fewer layers (Pipeline(..., "
            "split=[layers per stage]), or leave split out so bigtrain balances by measured "
            "layer time); if its host is busy, free its cores")


def _step_evidence(r: RunRecord, slow: int) -> str | None:
    """Whether the per-step samples (RunRecord.rank_step_samples) show rank `slow` slower
    step after step, by more than the run's own step-to-step spread: a sentence saying so,
    "" when they do not, None when the record has too few samples to tell.

    Ranks that share a host's cores take turns being slow for a while (another process, the
    OS); that raises one rank's mean but not the share of steps it loses, nor its median
    lead over the steps' spread (the interquartile range of the other ranks' samples)."""
    samples = r.rank_step_samples
    if len(samples) != len(r.rank_step_times) or len(samples[slow]) < MIN_STEP_SAMPLES:
        return None
    others = [s for i, s in enumerate(samples) if i != slow and len(s) >= MIN_STEP_SAMPLES]
    if not others:
        return None
    n = min(len(samples[slow]), *map(len, others))
    ref = [statistics.median(o[i] for o in others) for i in range(n)]  # per step
    lead = [samples[slow][i] - ref[i] for i in range(n)]
    slower = sum(d > 0 for d in lead)
    q1, _, q3 = statistics.quantiles(ref, n=4)
    if slower < max(MIN_STEP_SAMPLES, STRAGGLER_STEPS * n) or statistics.median(lead) <= q3 - q1:
        return ""
    return (f"; it was the slower in {slower} of {n} sampled steps, by a median "
            f"{_ms(statistics.median(lead))} (the other ranks' steps vary by {_ms(q3 - q1)})")


def _straggler(r: RunRecord) -> list[Finding]:
    found = _slowest(r)
    if found is None:
        return []
    (slow, median), times = found, r.rank_step_times
    total = r.step_time.total
    if total > 0 and (times[slow] - median) / total < STRAGGLER_SHARE:
        return []  # 0.3 ms of a 20 ms step: the ranks differ, but nobody waits for long
    steps = _step_evidence(r, slow)
    if steps == "" or (steps is None and times[slow] / median < UNSAMPLED_RATIO):
        return []  # slower on average only, or by a gap noise can make
    if _slow_stage(r) is not None:  # a stage's work is its layers: batch splits cannot help
        who, advice = f"pipeline stage {slow}", _rebalance_advice(r, slow)
    else:
        who = f"rank {slow}"
        advice = (f"give rank {slow} less work: fit(..., strategy='ddp_balanced') splits "
                  "each batch by measured speed; or free its host's cores (other "
                  "processes, torch.set_num_threads)")
    # time lost: every rank waits for the slow one, which could run as fast as the others
    return [Finding("straggler", "warning",
                    f"{who} takes {_ms(times[slow])} per step, "
                    f"{times[slow] / median:.2f}x the other ranks ({_ms(median)}){steps or ''}"
                    "; every collective waits for it", advice, 1.0 - median / times[slow])]


def _slow_bf16(r: RunRecord) -> list[Finding]:
    probe = r.extra.get("bf16_probe") or {}
    if r.precision != "bf16-mixed" or r.device != "cpu" or not probe.get("slow"):
        return []
    return [Finding("slow_bf16", "warning",
                    f"precision is bf16-mixed on a CPU where a bf16 matmul took "
                    f"{probe['slowdown']:.1f}x as long as fp32 (no native AVX-512 BF16 / AMX): "
                    "every step pays that in conversions",
                    "train with precision='32' on this CPU (bf16 pays off on GPUs and on "
                    "CPUs with native bf16); keep bf16 for those",
                    1.0 - 1.0 / max(probe["slowdown"], 1.0))]


SPEED_CHECKS = (_input_bound, _comm_bound, _low_mfu, _oversubscribed, _unfused, _bubble,
                _straggler, _slow_bf16)


def _stop(r: RunRecord) -> list[Finding]:
    """How a run that did not complete ended (NaN stops are judged by their cause)."""
    stop = r.stop or {}
    reason = stop.get("reason")
    if reason in (None, "completed", "nan_loss"):
        return []
    at = f"in epoch {stop.get('epoch', 0) + 1}"
    text = {"exception": f"the fit raised {at}: {stop.get('message', '')}",
            "interrupted": f"the fit was interrupted {at} (Ctrl-C)",
            "rank_lost": f"a rank stopped answering {at}: {stop.get('message', '')}",
            "running": f"the run ended without finishing {at} (the process was killed; "
                       "the record is from the last epoch end)"}[reason]
    advice = {"exception": "fix the error above and rerun with fit(..., checkpoint_dir=...) "
                           "so a failure resumes; the history up to it is kept here",
              "interrupted": "rerun with fit(..., checkpoint_dir=...) to resume where it "
                             "stopped",
              "rank_lost": "look at that rank's host and log (out of memory? killed?); "
                           "fit(..., checkpoint_dir=..., max_restarts=2) restarts the group",
              "running": "rerun with checkpoint_dir=... so a killed run can resume"}[reason]
    return [Finding("run_stopped", "error", text[:400], advice, 1.0)]


def _nan_in_steps(r: RunRecord, found: list[Finding]) -> list[Finding]:
    """A NaN stop before the first epoch ended leaves no history: read the step losses."""
    if (r.stop or {}).get("reason") != "nan_loss" or any(f.kind == "nan_loss" for f in found):
        return []
    step = next((i for i, v in enumerate(r.step_losses) if not math.isfinite(v)), None)
    where = f"step {step + 1} of " if step is not None else ""
    finite = [round(v, 4) for v in r.step_losses if math.isfinite(v)][-3:]
    return [Finding("nan_loss", "error",
                    f"the loss became NaN/Inf at {where}epoch {r.stop.get('epoch', 0) + 1}; "
                    f"last finite losses {finite}",
                    "see the cause ranked above it; then optimizer=Adam(learning_rate=3e-4, "
                    "clipnorm=1.0)", 0.5)]


def check_run(record: RunRecord) -> list[Finding]:
    """Speed findings (step-time breakdown, ranks, threads) and quality findings (data
    profile, gradient health, history, how the run stopped), ranked by how much each
    explains.

    Args:
        record: the run record the engine wrote.

    Returns:
        Findings, the one that explains most first; empty when nothing looks wrong.
    """
    # check_lr first: of two lr_too_high findings, the one with more evidence is kept
    grads = check_start(record) + check_lr(record) + check_gradients(record.layer_health)
    out = grads + check_profile(record.data_profile, record.history, stop=record.stop,
                                step_losses=record.step_losses, prior=grads)
    history = check_history(record.history, num_classes=record.num_classes)
    out += history + _nan_in_steps(record, history) + _stop(record)
    speed = [f for check in SPEED_CHECKS for f in check(record)]
    return sort_findings(reconcile_start(reconcile(_dedupe(_model_first(out, speed)))))


def _model_first(quality: list[Finding], speed: list[Finding]) -> list[Finding]:
    """A run whose model is broken (a quality finding that explains at least half of
    it) gets that cause first: a faster run of a model that does not learn helps nobody,
    so speed findings rank below it (their share of step time still orders them)."""
    broken = any(f.severity != "info" and f.impact >= BROKEN_IMPACT for f in quality)
    if broken:
        speed = [replace(f, impact=min(f.impact, BROKEN_IMPACT - 0.01)) for f in speed]
    return quality + speed


def _dedupe(findings: list[Finding]) -> list[Finding]:
    """One finding per kind: the one that explains most."""
    best: dict[str, Finding] = {}
    for f in findings:
        if f.kind not in best or f.impact > best[f.kind].impact:
            best[f.kind] = f
    return list(best.values())
